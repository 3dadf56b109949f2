//! Reading a Hugging Face `config.json`: what every family's reader shares. A key the file leaves
//! out takes transformers' default (`save_pretrained` writes only what differs from it); a key
//! mim's blocks cannot honour is refused with the reason, never ignored.

use anyhow::{Context, Result, ensure};
use serde_json::{Map, Value};

/// A `config.json` read for a model called `model` in errors.
pub(super) struct HfConfig<'a> {
    obj: &'a Map<String, Value>,
    model: &'static str,
}

impl<'a> HfConfig<'a> {
    /// The JSON object of a `config.json` for `model` ("MAE", "BEiT", "Swin").
    pub(super) fn new(json: &'a Value, model: &'static str) -> Result<Self> {
        Ok(HfConfig { obj: json.as_object().context("config.json is not a JSON object")?, model })
    }

    /// A non-negative integer; a pair is taken when both are equal (transformers accepts a pair for
    /// the image and patch sizes; mim's models are square).
    pub(super) fn usize(&self, key: &str, default: usize) -> Result<usize> {
        let Some(v) = self.obj.get(key) else { return Ok(default) };
        let v = match v.as_array().map(Vec::as_slice) {
            Some([a, b]) => {
                ensure!(
                    a == b,
                    "config.json sets {key} {v}: mim's {} takes square images and patches (resize the position \
                     parameters to a square grid first)",
                    self.model
                );
                a
            }
            _ => v,
        };
        v.as_u64().map(|n| n as usize).with_context(|| format!("config.json: {key} {v} is not a non-negative integer"))
    }

    /// A number.
    pub(super) fn float(&self, key: &str, default: f64) -> Result<f64> {
        self.obj
            .get(key)
            .map_or(Ok(default), |v| v.as_f64().with_context(|| format!("config.json: {key} {v} is not a number")))
    }

    /// A true/false flag.
    pub(super) fn flag(&self, key: &str, default: bool) -> Result<bool> {
        self.obj.get(key).map_or(Ok(default), |v| {
            v.as_bool().with_context(|| format!("config.json: {key} {v} is not true or false"))
        })
    }

    /// A list of non-negative integers.
    pub(super) fn list(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        self.obj.get(key).map_or(Ok(default.to_vec()), |v| {
            serde_json::from_value(v.clone())
                .with_context(|| format!("config.json: {key} {v} is not a list of integers"))
        })
    }

    /// Refuses what mim's transformer blocks are not: an activation other than the exact (erf) GELU,
    /// attention without a query/value bias, dropout.
    pub(super) fn check_blocks(&self) -> Result<()> {
        let act = self.obj.get("hidden_act").and_then(Value::as_str).unwrap_or("gelu");
        ensure!(
            act == "gelu",
            "config.json sets hidden_act \"{act}\": mim's {} blocks use the exact (erf) GELU, Hugging Face's \"gelu\"; \
             these weights were trained with another activation and would give wrong outputs",
            self.model
        );
        ensure!(
            self.flag("qkv_bias", true)?,
            "config.json sets qkv_bias false: mim's {} attention always has a query and value bias (as the official \
             code); a model without one is not supported",
            self.model
        );
        for key in ["hidden_dropout_prob", "attention_probs_dropout_prob"] {
            let p = self.float(key, 0.0)?;
            ensure!(
                p == 0.0,
                "config.json sets {key} {p}: mim's {} has no dropout (the papers' recipes use none); set it to 0.0",
                self.model
            );
        }
        Ok(())
    }
}
