//! What DashScope accepts: each model's capabilities and the input rules (docs/DASHSCOPE.md
//! §1.3), and the data URIs its request body carries the images in.

use base64::Engine as _;

use crate::core::image::{Fitted, Format, InputRules};
use crate::core::ports::model::ModelCaps;

/// The edit endpoint, after `backend.base_url` (the same on DashScope's regions and on 302.AI).
pub const EDIT_PATH: &str = "/services/aigc/multimodal-generation/generation";

/// Largest data URI the API takes (10 MB).
const MAX_DATA_URI: usize = 10 * 1024 * 1024;

/// `data:` and `;base64,` around the longest MIME type we send (`image/jpeg`, `image/webp`).
const DATA_URI_FRAME: usize = "data:image/jpeg;base64,".len();

/// The input rules of every Qwen-Image-Edit model on DashScope: 384–3072 px a side, the file
/// small enough that its data URI stays within 10 MB. Outputs are at most 2048 px a side, so
/// that is the useful side (`backend.max_input_side` may change it).
pub const INPUT_RULES: InputRules = InputRules {
    min_side: 384,
    max_side: 3072,
    useful_side: 2048,
    max_file_bytes: (MAX_DATA_URI - DATA_URI_FRAME) / 4 * 3,
    formats: crate::core::image::ALL_FORMATS,
};

/// What a DashScope model accepts (docs/DASHSCOPE.md §1.3), by its name.
pub fn caps_of(model: &str) -> ModelCaps {
    // The original model and its dated snapshots take n = 1 and no prompt_extend.
    let legacy = model == "qwen-image-edit"
        || model
            .strip_prefix("qwen-image-edit-")
            .is_some_and(|rest| rest.starts_with("20"));
    if legacy {
        ModelCaps {
            max_n: 1,
            prompt_extend: false,
            size_sides: None,
        }
    } else {
        ModelCaps {
            max_n: 6,
            prompt_extend: true,
            size_sides: Some((512, 2048)),
        }
    }
}

/// `data:<mime>;base64,<bytes>` for the request body.
pub fn data_uri(image: &Fitted) -> String {
    let mime = image.format.mime();
    let mut out = String::with_capacity(data_uri_len(image.format, image.bytes.len()));
    out.push_str("data:");
    out.push_str(mime);
    out.push_str(";base64,");
    base64::engine::general_purpose::STANDARD.encode_string(&image.bytes, &mut out);
    out
}

/// Length of the data URI for `len` bytes of `format`.
fn data_uri_len(format: Format, len: usize) -> usize {
    "data:;base64,".len() + format.mime().len() + len.div_ceil(3) * 4
}
