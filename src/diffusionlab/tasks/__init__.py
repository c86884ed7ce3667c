"""Applications of a trained model: inpainting and outpainting, image-to-image, denoising, anomaly detection,
data augmentation, and frame prediction and interpolation of clips (floor 5: imports pipeline, sampling,
processes, denoisers, data and images; never training or the faces).

Every task takes and returns images in [0, 1] (N, C, H, W) and reaches the model only through ``pipe.encode``,
``pipe.decode``, ``pipe.sample_shape`` and ``pipe.guided_denoiser``, so latent models work too.
"""

from __future__ import annotations

from .anomaly import (
    ANOMALY_METHODS,
    AnomalyOptions,
    anomaly_scores,
    denoising_error,
    log_snr_levels,
    reconstruct,
    write_scores_csv,
)
from .augment import check_empty_folder, sample_image_folder, write_image_folder
from .calibration import (
    CALIBRATION_TASKS,
    Calibration,
    calibrate_series,
    calibration_cases,
    conformal_scale,
    scale_about_median,
)
from .common import TaskRun, check_images, pixel_shape, read_image, save_image, task_request
from .denoise import (
    DENOISE_MODES,
    denoise,
    encoding_scale,
    estimate_noise_sigma,
    noise_levels,
    noise_time,
    posterior_mean,
    posterior_sample,
)
from .img2img import check_strength, img2img, sdedit, start_index
from .impute import impute
from .infill import BLANK, InfillPrompt, infill, parse_infill
from .inpaint import (
    INPAINT_METHODS,
    InpaintOptions,
    KnownRegion,
    check_mask,
    inpaint,
    model_space_keep,
    outpaint,
    outpaint_canvas,
    read_mask,
    rect_mask,
    repaint,
    repaint_schedule,
)
from .ode_space import INVERTIBLE, NullInversion, interpolate, invert, invert_null, regenerate, variations
from .series import SeriesSamples, forecast, impute_series, window_starts
from .tune import save_tuned_grid, tune_model_grid
from .video import check_clips, fill_frames, parse_frames

__all__ = [
    "check_clips",
    "fill_frames",
    "parse_frames",
    "INVERTIBLE",
    "invert",
    "invert_null",
    "NullInversion",
    "regenerate",
    "interpolate",
    "variations",
    "tune_model_grid",
    "save_tuned_grid",
    "BLANK",
    "InfillPrompt",
    "SeriesSamples",
    "CALIBRATION_TASKS",
    "Calibration",
    "calibrate_series",
    "calibration_cases",
    "conformal_scale",
    "scale_about_median",
    "forecast",
    "impute_series",
    "window_starts",
    "impute",
    "infill",
    "parse_infill",
    "ANOMALY_METHODS",
    "DENOISE_MODES",
    "INPAINT_METHODS",
    "AnomalyOptions",
    "InpaintOptions",
    "KnownRegion",
    "TaskRun",
    "anomaly_scores",
    "check_empty_folder",
    "check_images",
    "check_mask",
    "check_strength",
    "denoise",
    "denoising_error",
    "encoding_scale",
    "estimate_noise_sigma",
    "noise_levels",
    "img2img",
    "inpaint",
    "log_snr_levels",
    "model_space_keep",
    "noise_time",
    "outpaint",
    "outpaint_canvas",
    "pixel_shape",
    "posterior_mean",
    "posterior_sample",
    "read_image",
    "read_mask",
    "reconstruct",
    "rect_mask",
    "repaint",
    "repaint_schedule",
    "sample_image_folder",
    "save_image",
    "sdedit",
    "start_index",
    "task_request",
    "write_image_folder",
    "write_scores_csv",
]
