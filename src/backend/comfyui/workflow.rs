//! The workflow a job runs: ComfyUI's API format (node ids as keys, each node a `class_type`
//! and its `inputs`, where a link to another node's output is `[node_id, output_index]`), the
//! mapping that says which inputs take the job's images, prompt, seed and count, and the copy
//! filled in for one job.
//!
//! One workflow serves jobs of one to three images: the image nodes a job does not use are
//! removed, and so is every input that linked to them, so ComfyUI never waits for a picture
//! nobody sent.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::core::ports::model::{BackendError, OperatorProblem};

/// The built-in workflow (Qwen-Image-Edit-2509 with three image slots), used when
/// `backend.workflow` is empty.
pub const BUILTIN_WORKFLOW: &str =
    include_str!("../../../examples/comfyui/qwen-image-edit-2509.json");
/// Where the built-in workflow takes each input image (`LoadImage` nodes), in order.
pub const BUILTIN_IMAGE_INPUTS: [&str; 3] = ["78.image", "106.image", "108.image"];
/// Where it takes the instruction, the negative prompt, the seed and the number of images.
pub const BUILTIN_PROMPT_INPUT: &str = "111.prompt";
pub const BUILTIN_NEGATIVE_INPUT: &str = "110.prompt";
pub const BUILTIN_SEED_INPUT: &str = "3.seed";
pub const BUILTIN_BATCH_INPUT: &str = "120.amount";
/// Its `SaveImage` node: the only images we hand back.
pub const BUILTIN_OUTPUT_NODE: &str = "60";

/// One input of one node, written `node.field` in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InputRef {
    pub node: String,
    pub field: String,
}

impl InputRef {
    /// Parses `node.field`; `key` names the setting in the error.
    pub fn parse(key: &str, value: &str) -> Result<Self, String> {
        match value.trim().split_once('.') {
            Some((node, field)) if !node.is_empty() && !field.is_empty() => Ok(Self {
                node: node.to_owned(),
                field: field.to_owned(),
            }),
            _ => Err(format!(
                "{key} = {value:?} must be \"node.field\", e.g. \"78.image\""
            )),
        }
    }
}

impl std::fmt::Display for InputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.node, self.field)
    }
}

/// Which inputs of the workflow receive what a job brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// Input `i` of a job goes into `image_inputs[i]`.
    pub image_inputs: Vec<InputRef>,
    pub prompt: InputRef,
    pub negative: Option<InputRef>,
    /// `None`: the workflow keeps its own seed.
    pub seed: Option<InputRef>,
    /// `None`: the workflow makes one image per run, so jobs ask for one.
    pub batch: Option<InputRef>,
    /// `None`: the images of every node are the answer.
    pub output_node: Option<String>,
}

/// The mapping settings as the configuration spells them (`node.field` strings, empty = none).
pub struct MappingText<'a> {
    pub image_inputs: &'a [String],
    pub prompt: &'a str,
    pub negative: &'a str,
    pub seed: &'a str,
    pub batch: &'a str,
    pub output_node: &'a str,
}

impl Mapping {
    /// The mapping of [`BUILTIN_WORKFLOW`].
    pub fn builtin() -> Self {
        let at = |s: &str| InputRef::parse("builtin", s).expect("the built-in mapping parses");
        Self {
            image_inputs: BUILTIN_IMAGE_INPUTS.iter().map(|s| at(s)).collect(),
            prompt: at(BUILTIN_PROMPT_INPUT),
            negative: Some(at(BUILTIN_NEGATIVE_INPUT)),
            seed: Some(at(BUILTIN_SEED_INPUT)),
            batch: Some(at(BUILTIN_BATCH_INPUT)),
            output_node: Some(BUILTIN_OUTPUT_NODE.to_owned()),
        }
    }

    /// A mapping from the settings. With the built-in workflow an empty setting means the
    /// built-in one; with the operator's own workflow it means "none" (images and prompt must
    /// be given).
    pub fn from_text(t: &MappingText<'_>, builtin: bool) -> Result<Self, String> {
        let base = builtin.then(Self::builtin);
        let optional = |key: &str, v: &str| -> Result<Option<InputRef>, String> {
            if v.trim().is_empty() {
                Ok(None)
            } else {
                InputRef::parse(key, v).map(Some)
            }
        };
        let image_inputs = if t.image_inputs.is_empty() {
            match &base {
                Some(b) => b.image_inputs.clone(),
                None => return Err("backend.image_inputs must name the workflow's image inputs (\"node.field\", one per image) when backend.workflow is set".into()),
            }
        } else {
            t.image_inputs
                .iter()
                .map(|s| InputRef::parse("backend.image_inputs", s))
                .collect::<Result<_, _>>()?
        };
        let prompt = match (optional("backend.prompt_input", t.prompt)?, &base) {
            (Some(p), _) => p,
            (None, Some(b)) => b.prompt.clone(),
            (None, None) => return Err("backend.prompt_input must name the workflow's prompt input (\"node.field\") when backend.workflow is set".into()),
        };
        let or_base = |mine: Option<InputRef>, theirs: fn(&Mapping) -> Option<InputRef>| {
            mine.or_else(|| base.as_ref().and_then(theirs))
        };
        let output = t.output_node.trim();
        Ok(Self {
            image_inputs,
            prompt,
            negative: or_base(optional("backend.negative_input", t.negative)?, |b| {
                b.negative.clone()
            }),
            seed: or_base(optional("backend.seed_input", t.seed)?, |b| b.seed.clone()),
            batch: or_base(optional("backend.batch_input", t.batch)?, |b| {
                b.batch.clone()
            }),
            output_node: if output.is_empty() {
                base.and_then(|b| b.output_node)
            } else {
                Some(output.to_owned())
            },
        })
    }

    /// Every mapped input with the setting that names it.
    fn inputs(&self) -> Vec<(&'static str, &InputRef)> {
        let mut all: Vec<(&'static str, &InputRef)> = self
            .image_inputs
            .iter()
            .map(|r| ("backend.image_inputs", r))
            .collect();
        all.push(("backend.prompt_input", &self.prompt));
        let optional = [
            ("backend.negative_input", &self.negative),
            ("backend.seed_input", &self.seed),
            ("backend.batch_input", &self.batch),
        ];
        all.extend(
            optional
                .into_iter()
                .filter_map(|(k, r)| r.as_ref().map(|r| (k, r))),
        );
        all
    }
}

/// Parses an API-format workflow and checks its shape; the error names `origin` (the file).
pub fn parse(text: &str, origin: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("backend.workflow: {origin} is not JSON: {e}"))?;
    let Some(nodes) = value.as_object() else {
        return Err(format!(
            "backend.workflow: {origin} is not a JSON object of nodes"
        ));
    };
    if nodes.contains_key("nodes") && nodes.contains_key("links") {
        return Err(format!(
            "backend.workflow: {origin} is a UI workflow; export it from ComfyUI with \"Export (API)\""
        ));
    }
    if nodes.is_empty() {
        return Err(format!("backend.workflow: {origin} has no nodes"));
    }
    for (id, node) in nodes {
        let ok = node.get("class_type").is_some_and(Value::is_string)
            && node.get("inputs").is_some_and(Value::is_object);
        if !ok {
            return Err(format!(
                "backend.workflow: node {id:?} of {origin} has no class_type or no inputs (is it an API-format workflow?)"
            ));
        }
    }
    Ok(value)
}

/// What the mapping names that the workflow lacks, one line each.
pub fn mapping_problems(workflow: &Value, m: &Mapping) -> Vec<String> {
    let mut out = Vec::new();
    let has = |node: &str| workflow.get(node).is_some();
    for (key, r) in m.inputs() {
        if !has(&r.node) {
            out.push(format!(
                "{key} = \"{r}\": the workflow has no node {:?}",
                r.node
            ));
        }
    }
    if let Some(node) = &m.output_node
        && !has(node)
    {
        out.push(format!(
            "backend.output_node = {node:?}: the workflow has no such node"
        ));
    }
    let mut seen = HashSet::new();
    for r in &m.image_inputs {
        if !seen.insert(r) {
            out.push(format!("backend.image_inputs names \"{r}\" twice"));
        }
    }
    out
}

/// What one job puts into the workflow.
pub struct JobInputs<'a> {
    /// The names ComfyUI gave the uploaded images, in order.
    pub images: &'a [String],
    pub prompt: &'a str,
    pub negative: Option<&'a str>,
    pub seed: u64,
    pub n: u8,
}

/// The workflow filled in for one job, its unused image nodes and their links removed.
pub fn build(template: &Value, m: &Mapping, job: &JobInputs<'_>) -> Result<Value, BackendError> {
    // The caller refused more images than slots before uploading any.
    let mut wf = template.clone();
    for (name, at) in job.images.iter().zip(&m.image_inputs) {
        set(&mut wf, at, Value::from(name.as_str()))?;
    }
    set(&mut wf, &m.prompt, Value::from(job.prompt))?;
    if let (Some(at), Some(text)) = (&m.negative, job.negative.filter(|s| !s.trim().is_empty())) {
        set(&mut wf, at, Value::from(text))?;
    }
    if let Some(at) = &m.seed {
        set(&mut wf, at, Value::from(job.seed))?;
    }
    if let Some(at) = &m.batch {
        set(&mut wf, at, Value::from(job.n))?;
    }
    let used: HashSet<&str> = m.image_inputs[..job.images.len()]
        .iter()
        .map(|r| r.node.as_str())
        .collect();
    let unused: HashSet<&str> = m.image_inputs[job.images.len()..]
        .iter()
        .map(|r| r.node.as_str())
        .filter(|node| !used.contains(node))
        .collect();
    prune(&mut wf, &unused);
    Ok(wf)
}

/// The error for a job with more images than the workflow has slots for.
pub fn too_many_images(slots: usize) -> BackendError {
    BackendError::Rejected {
        code: "too_many_images".into(),
        message: format!("this ComfyUI workflow takes at most {slots} image(s)"),
    }
}

/// Removes `nodes` and every input of the other nodes that links to one of them.
fn prune(wf: &mut Value, nodes: &HashSet<&str>) {
    let Some(all) = wf.as_object_mut() else {
        return;
    };
    all.retain(|id, _| !nodes.contains(id.as_str()));
    for node in all.values_mut() {
        if let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) {
            inputs.retain(|_, v| !link_to(v).is_some_and(|to| nodes.contains(to)));
        }
    }
}

/// The node an input links to, when it is a link (`["node_id", output_index]`).
pub fn link_to(v: &Value) -> Option<&str> {
    match v.as_array().map(Vec::as_slice) {
        Some([Value::String(node), index]) if index.is_u64() => Some(node.as_str()),
        _ => None,
    }
}

/// Sets one input; a node or `inputs` that is not there is the operator's workflow to fix.
fn set(wf: &mut Value, at: &InputRef, v: Value) -> Result<(), BackendError> {
    let inputs: Option<&mut Map<String, Value>> = wf
        .get_mut(&at.node)
        .and_then(|n| n.get_mut("inputs"))
        .and_then(Value::as_object_mut);
    let Some(inputs) = inputs else {
        return Err(BackendError::Operator {
            problem: OperatorProblem::Model,
            code: "invalid_workflow".into(),
            message: format!(
                "the workflow has no node {:?} (mapped as \"{at}\")",
                at.node
            ),
        });
    };
    inputs.insert(at.field.clone(), v);
    Ok(())
}
