//! An in-memory edit service: answers every edit at once with images it keeps itself (its
//! answer is references to them, as a non-DashScope service's would be), records what it was
//! asked, and can be told to fail the next edit.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use qwen_edit_bot::core::image::InputRules;
use qwen_edit_bot::core::ports::BoxFuture;
use qwen_edit_bot::core::ports::model::{
    Answer, BackendError, EditRequest, EditService, ModelCaps,
};

#[derive(Default)]
pub struct MemoryService {
    kept: Mutex<HashMap<String, Bytes>>,
    asked: Mutex<Vec<(String, usize, u8)>>,
    fail_next: Mutex<Option<BackendError>>,
}

impl MemoryService {
    /// Prompt, number of inputs and `n` of every edit asked, in order.
    pub fn asked(&self) -> Vec<(String, usize, u8)> {
        self.asked.lock().unwrap().clone()
    }

    pub fn fail_next(&self, error: BackendError) {
        *self.fail_next.lock().unwrap() = Some(error);
    }
}

impl EditService for MemoryService {
    fn model(&self) -> &str {
        "memory-edit"
    }

    fn caps(&self) -> ModelCaps {
        ModelCaps {
            max_n: 2,
            prompt_extend: false,
            size_sides: None,
        }
    }

    fn input_rules(&self) -> InputRules {
        InputRules {
            min_side: 16,
            max_side: 4096,
            useful_side: 4096,
            max_file_bytes: 20 << 20,
            formats: qwen_edit_bot::core::image::ALL_FORMATS,
        }
    }

    fn edit<'a>(&'a self, req: &'a EditRequest) -> BoxFuture<'a, Result<Answer, BackendError>> {
        Box::pin(async move {
            let mut asked = self.asked.lock().unwrap();
            asked.push((req.prompt.clone(), req.images.len(), req.n));
            if let Some(error) = self.fail_next.lock().unwrap().take() {
                return Err(error);
            }
            let call = asked.len();
            let mut kept = self.kept.lock().unwrap();
            let refs = (0..req.n)
                .map(|i| {
                    let at = format!("mem:{call}:{i}");
                    // The result is the first input, as it was given: easy to recognise.
                    kept.insert(at.clone(), req.images[0].bytes.clone());
                    at
                })
                .collect();
            Ok(Answer {
                request_id: Some(format!("mem-{call}")),
                parts: refs,
                service: None,
            })
        })
    }

    fn redeem<'a>(
        &'a self,
        at: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        let kept = self.kept.lock().unwrap().get(at).cloned();
        Box::pin(async move {
            match kept {
                Some(bytes) if bytes.len() <= limit => Ok(bytes),
                Some(_) => Err(BackendError::Download("larger than its share".into())),
                None => Err(BackendError::Download(format!("nothing kept at {at}"))),
            }
        })
    }
}
