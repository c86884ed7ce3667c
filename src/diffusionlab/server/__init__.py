"""The studio (floor 6): an HTTP API and web page serving many models of every data kind, with a job queue,
progress, cancelling, a history in SQLite and bounds on every request.

``diffusionlab serve DIR`` starts it; ``create_app(DIR or model folder or Pipeline)`` builds the FastAPI app for
tests or another ASGI server. ``app`` has the routes, ``jobs`` the queue, ``history`` the database, ``registry``
the models, ``work`` the tasks and their outputs per data kind, ``requests`` the request types and error answers.
"""

from .app import StudioSettings, create_app
from .requests import (
    MAX_BODY_BYTES,
    MAX_LABEL,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_STEPS,
    BodyLimit,
    Img2ImgRequest,
    InfillRequest,
    InpaintRequest,
    JobAnswer,
    SampleRequest,
    one_sentence,
    request_models,
    validation_sentence,
)

__all__ = [
    "create_app",
    "StudioSettings",
    "SampleRequest",
    "Img2ImgRequest",
    "InpaintRequest",
    "InfillRequest",
    "JobAnswer",
    "BodyLimit",
    "validation_sentence",
    "one_sentence",
    "request_models",
    "MAX_SAMPLES",
    "MAX_STEPS",
    "MAX_SEED",
    "MAX_LABEL",
    "MAX_BODY_BYTES",
]
