//! Tensor names translated between another code's naming and the canonical one, both ways, by one
//! table of name patterns per naming: the same table reads a file and writes one, so the two
//! directions cannot drift apart.
//!
//! In a pattern, `#` is a number (a block or a stage), `*` the rest of the name (`weight`, `bias`,
//! ...), and `{query|key|value}` one of separate query, key and value tensors that the canonical
//! name holds as one fused `qkv` tensor (their rows stacked in that order, as timm and the official
//! codes fuse them). Both sides of a rule hold the same `#` and `*`, in the same order.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use crate::io::TensorMap;

/// A tensor as a [`TensorMap`] holds it: shape and values.
type Tensor = (Vec<usize>, Vec<f32>);

/// A naming as rules `(theirs, canonical)`. Reading, the first rule whose `theirs` matches a name
/// wins, so aliases (transformers 4.x and 5.x names) may follow the name that is written; writing,
/// the first rule whose canonical side matches wins. An empty canonical side drops the tensor
/// (derived buffers such as relative position indices).
pub(super) struct Names {
    what: &'static str,
    rules: Vec<(String, String)>,
}

/// What a pattern captured from a name.
#[derive(Default)]
struct Captures<'a> {
    numbers: Vec<&'a str>,
    rest: Option<String>,
    role: Option<usize>,
}

fn matches<'a>(pattern: &str, name: &'a str) -> Option<Captures<'a>> {
    let parts: Vec<&str> = name.split('.').collect();
    let mut caps = Captures::default();
    let mut i = 0;
    for seg in pattern.split('.') {
        if seg == "*" {
            (i < parts.len()).then_some(())?;
            caps.rest = Some(parts[i..].join("."));
            return Some(caps);
        }
        let part = *parts.get(i)?;
        if seg == "#" {
            part.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            caps.numbers.push(part);
        } else if let Some(roles) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            caps.role = Some(roles.split('|').position(|r| r == part)?);
        } else if seg != part {
            return None;
        }
        i += 1;
    }
    (i == parts.len()).then_some(caps)
}

/// `pattern` with the captures put in; `{a|b|c}` becomes the role's name.
fn fill(pattern: &str, caps: &Captures, role: Option<usize>) -> String {
    let mut numbers = caps.numbers.iter();
    let segs: Vec<String> = pattern
        .split('.')
        .map(|seg| match seg {
            "#" => numbers.next().map_or_else(String::new, |n| n.to_string()),
            "*" => caps.rest.clone().unwrap_or_default(),
            s => match (s.strip_prefix('{').and_then(|s| s.strip_suffix('}')), role) {
                (Some(roles), Some(r)) => roles.split('|').nth(r).unwrap_or_default().to_string(),
                _ => s.to_string(),
            },
        })
        .collect();
    segs.join(".")
}

impl Names {
    /// A naming called `what` in errors, with its rules.
    pub(super) fn new(what: &'static str, rules: Vec<(String, String)>) -> Self {
        Names { what, rules }
    }

    /// Every tensor under its canonical name; separate q, k and v fused. A name no rule knows is an
    /// error naming it.
    pub(super) fn to_canonical(&self, theirs: &TensorMap) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        let mut qkv: BTreeMap<String, [Option<&Tensor>; 3]> = BTreeMap::new();
        for (k, t) in theirs {
            let Some((caps, ours)) = self.rules.iter().find_map(|(p, o)| Some((matches(p, k)?, o))) else {
                bail!("unexpected tensor '{k}' in {}", self.what);
            };
            if ours.is_empty() {
                continue;
            }
            let name = fill(ours, &caps, None);
            match caps.role {
                Some(r) => qkv.entry(name).or_default()[r] = Some(t),
                None => {
                    out.insert(name, t.clone());
                }
            }
        }
        for (name, parts) in qkv {
            let [Some(q), Some(k), Some(v)] = parts else { bail!("'{name}' is missing one of query/key/value") };
            let mut shape = q.0.clone();
            shape[0] *= 3;
            out.insert(name, (shape, [q.1.as_slice(), &k.1, &v.1].concat()));
        }
        Ok(out)
    }

    /// Every canonical tensor under this naming's name; fused qkv split into q, k and v.
    pub(super) fn to_theirs(&self, ours: &TensorMap) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for (k, (s, v)) in ours {
            let found = self.rules.iter().filter(|(_, o)| !o.is_empty()).find_map(|(p, o)| Some((matches(o, k)?, p)));
            let Some((caps, theirs)) = found else { bail!("tensor '{k}' has no name in {}", self.what) };
            if !theirs.contains('{') {
                out.insert(fill(theirs, &caps, None), (s.clone(), v.clone()));
                continue;
            }
            // PyTorch [3 D, in] or [3 D]: q, k and v are consecutive row blocks.
            let per = v.len() / 3;
            let mut shape = s.clone();
            shape[0] /= 3;
            for r in 0..3 {
                out.insert(fill(theirs, &caps, Some(r)), (shape.clone(), v[r * per..(r + 1) * per].to_vec()));
            }
        }
        Ok(out)
    }
}

/// Rules for each block: `theirs_block.theirs_module` <-> `ours_block.ours_module`, for every pair
/// of block prefixes and of module names.
pub(super) fn per_block(blocks: &[(&str, &str)], modules: &[(&str, &str)]) -> Vec<(String, String)> {
    blocks
        .iter()
        .flat_map(|(tb, ob)| modules.iter().map(move |(tm, om)| (format!("{tb}.{tm}"), format!("{ob}.{om}"))))
        .collect()
}

/// `rules` given as string pairs.
pub(super) fn owned(rules: &[(&str, &str)]) -> Vec<(String, String)> {
    rules.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_numbers_rest_and_roles() {
        let c = matches("a.#.{q|k|v}.*", "a.12.k.weight").unwrap();
        assert_eq!((c.numbers, c.rest.as_deref(), c.role), (vec!["12"], Some("weight"), Some(1)));
        assert!(matches("a.#.*", "a.x.weight").is_none());
        assert!(matches("a.#", "a.1.b").is_none());
        assert!(matches("a.*", "a").is_none());
        let c = matches("a.#.{q|k|v}.*", "a.3.v.bias").unwrap();
        assert_eq!(fill("b.#.qkv.*", &c, None), "b.3.qkv.bias");
        assert_eq!(fill("a.#.{q|k|v}.*", &c, Some(0)), "a.3.q.bias");
    }

    #[test]
    fn both_directions_invert_each_other() {
        let names = Names::new(
            "a test naming",
            [
                owned(&[("x.index", ""), ("top.*", "norm.*")]),
                per_block(&[("x.#", "blocks.#")], &[("{q|k|v}.*", "qkv.*")]),
            ]
            .concat(),
        );
        let theirs = TensorMap::from([
            ("x.0.q.weight".to_string(), (vec![1, 2], vec![1.0, 2.0])),
            ("x.0.k.weight".to_string(), (vec![1, 2], vec![3.0, 4.0])),
            ("x.0.v.weight".to_string(), (vec![1, 2], vec![5.0, 6.0])),
            ("top.bias".to_string(), (vec![1], vec![7.0])),
        ]);
        let mut with_buffer = theirs.clone();
        with_buffer.insert("x.index".into(), (vec![1], vec![0.0]));
        let ours = names.to_canonical(&with_buffer).unwrap();
        assert_eq!(ours["blocks.0.qkv.weight"], (vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(ours.len(), 2);
        assert_eq!(names.to_theirs(&ours).unwrap(), theirs);
        let err = names.to_canonical(&TensorMap::from([("y".to_string(), (vec![1], vec![0.0]))])).unwrap_err();
        assert_eq!(err.to_string(), "unexpected tensor 'y' in a test naming");
    }
}
