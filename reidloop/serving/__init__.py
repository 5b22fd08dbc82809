"""Ray-free core of the HTTP Re-ID service: input decoding with limits, the gallery index,
checkpoint following and the per-replica serving state (composed into Ray Serve by ``services/``)."""
from .checkpoints import (RELOAD_ERRORS, CheckpointError, CheckpointFollower, Fingerprint, ServingModel,
                          load_serving_model, reload_error_code, resolve_checkpoint)
from .errors import ServingError
from .forms import MAX_JSON_DEPTH, Upload, parse_id_list, parse_json, parse_k, parse_meta, parse_upload
from .gallery import GalleryEntry, GalleryIndex, make_entry
from .access import ADMIN, READ, Access, redact_matches, require_admin
from .images import InputTransform, check_image_content_type, check_request_pixels, decode_image
from .multipart import Part, parse_multipart
from .redact import redact_paths
from .service import ReidService, ServingState, gallery_folder
from .store import GalleryStore, StoreError

__all__ = [
    "RELOAD_ERRORS", "CheckpointError", "CheckpointFollower", "Fingerprint", "ServingModel", "load_serving_model",
    "reload_error_code", "resolve_checkpoint", "ServingError", "MAX_JSON_DEPTH", "Upload", "parse_id_list",
    "parse_json", "parse_k", "parse_meta", "parse_upload", "GalleryEntry", "GalleryIndex", "make_entry",
    "InputTransform", "check_image_content_type", "decode_image", "Part", "parse_multipart", "redact_paths",
    "ReidService", "ServingState", "gallery_folder", "GalleryStore", "StoreError", "ADMIN", "READ", "Access",
    "redact_matches", "require_admin", "check_request_pixels",
]
