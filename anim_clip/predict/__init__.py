"""``anim-clip predict``: a trained checkpoint on a season of videos.

:mod:`.inputs` turns files, folders and list files into the videos to score; :mod:`.model` scores
them (:class:`Predictor`), decoding ahead across videos in threads (:mod:`.stream`);
:mod:`.journal` records each video as it finishes, so a killed run resumes and shards merge;
:mod:`.outputs` makes ``predictions.json``, ``predictions.csv`` and the timeline from the records;
:mod:`.runner` is the two commands.
"""

from anim_clip.predict.model import Predictor, VideoPrediction, Window, predict_videos, window_bounds
from anim_clip.predict.outputs import OutputOptions, prediction_record, prediction_table, write_outputs
from anim_clip.predict.runner import merge_predictions, run_predict

__all__ = ["OutputOptions", "Predictor", "VideoPrediction", "Window", "merge_predictions", "predict_videos",
           "prediction_record", "prediction_table", "run_predict", "window_bounds", "write_outputs"]
