"""Ray-free core of the HTTP Re-ID service: input decoding with limits, the gallery index,
checkpoint following and the per-replica serving state (composed into Ray Serve by ``services/``)."""
from .checkpoints import CheckpointFollower, Fingerprint, ServingModel, load_serving_model, resolve_checkpoint
from .errors import ServingError
from .forms import Upload, parse_id_list, parse_k, parse_meta, parse_upload
from .gallery import GalleryEntry, GalleryIndex, make_entry
from .images import InputTransform, check_image_content_type, decode_image
from .multipart import Part, parse_multipart
from .service import ReidService, ServingState

__all__ = [
    "CheckpointFollower", "Fingerprint", "ServingModel", "load_serving_model", "resolve_checkpoint",
    "ServingError", "Upload", "parse_id_list", "parse_k", "parse_meta", "parse_upload", "GalleryEntry",
    "GalleryIndex", "make_entry", "InputTransform", "check_image_content_type", "decode_image", "Part",
    "parse_multipart", "ReidService", "ServingState",
]
