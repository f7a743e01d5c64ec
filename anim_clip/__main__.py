from anim_clip.cli import main

main()
