//! PyTorch weights files (`.pth`, `.pt`, Hugging Face `pytorch_model.bin`), read without running them.
//!
//! A `torch.save` file is a pickle, and unpickling in Python can call any function the pickle names.
//! The tensors are read here by [`pytorch_reader`], burn's reader, which parses the pickle and never
//! calls anything: a call it does not know becomes an opaque value. It would therefore load a file
//! whose pickle asks for `os.system` without complaint, so mim first walks the pickle's opcodes and
//! refuses any file naming a global (`GLOBAL`, or `STACK_GLOBAL` with its module and name resolved
//! from the strings or memo entries pushed before it) outside this allowlist:
//!
//! - what `torch.save` writes for tensors: `collections.OrderedDict`, `torch._utils._rebuild_tensor`,
//!   `_rebuild_tensor_v2`, `_rebuild_tensor_v3`, `_rebuild_parameter`, `_rebuild_parameter_with_state`,
//!   `torch._tensor._rebuild_from_type_v2`, `torch.nn.parameter.Parameter`, the storage classes
//!   (`torch.FloatStorage` and every other `torch.*Storage`, `torch.storage.UntypedStorage`), the
//!   dtypes (`torch.float32`, `torch.bfloat16`, ...), `torch.Size`, `torch.device`, and
//!   `builtins.set`/`frozenset` (`__builtin__.*` in protocol 2);
//! - data-only classes the training scripts of MAE, BEiT and SimMIM save beside the weights, which
//!   the reader keeps opaque: `argparse.Namespace` (MAE/BEiT `args`), `yacs.config.CfgNode`
//!   (SimMIM/Swin `config`), numpy scalars and dtypes (`numpy.core.multiarray.scalar`,
//!   `numpy._core.multiarray.scalar`, `numpy.dtype`) and `_codecs.encode`, which pickle protocol 2
//!   writes for the bytes of a numpy scalar.
//!
//! This is torch's own `weights_only` allowlist (`torch/_weights_only_unpickler.py`) without its
//! quantized, sparse, meta and subclass tensors (which the reader refuses), `collections.Counter`,
//! `builtins.bytearray`/`complex` and `torch.serialization._get_layout`, plus the data classes above.
//! Since nothing is ever called, the allowlist is a policy: a file that names anything else was
//! not written by `torch.save(state_dict)` or a training script, and mim will not guess at it.
//!
//! A file whose `STACK_GLOBAL` operands are not plain strings is refused as unverifiable. Legacy
//! files (`_use_new_zipfile_serialization=False`) are scanned through their leading pickles (magic
//! number, protocol, system info, the object, the storage keys) up to the raw storage bytes.
//!
//! pytorch-reader 0.22.1 cannot open two kinds of files, which mim reads through a temporary copy
//! (the size of the file, in the system's temporary folder, removed once read): a pickle holding a
//! yacs `CfgNode`, a dict subclass it stops at ("unexpected pickle opcode SetItem"), gets a copy whose
//! pickle builds a plain dict instead; and a zip whose archive folder name has 21 characters (a file
//! saved as `mae_pretrain_vit_base.pth`), where the zip crate it opens archives with misplaces the
//! central directory, gets a plain rewritten zip.
//!
//! The weights are the top level of the file, or, in a training checkpoint, the first of `model`,
//! `state_dict`, `module` and `model_ema` that holds tensors; the other top-level entries are
//! reported as ignored. Tensors inside nested dicts and lists are named by their dotted path (a
//! whole-module save reads as its state dict), and a `module.` prefix on every name (a
//! `DistributedDataParallel` save) is removed.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use pytorch_reader::{DType, MAX_PICKLE_SIZE, OpCode, PickleValue, PytorchReader, Tensor};

use super::{TensorFile, TensorFormat, TensorMap, f16_to_f32};

/// The top-level keys training checkpoints keep their weights under, in order of preference.
const NESTED_KEYS: [&str; 4] = ["model", "state_dict", "module", "model_ema"];

/// Longest module or attribute name taken for one.
const MAX_NAME: u64 = 1024;

/// Globals accepted anywhere in the pickle, as `module.name` (see the module docs).
const ALLOWED: &[&str] = &[
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._tensor._rebuild_from_type_v2",
    "torch.nn.parameter.Parameter",
    "torch.storage.UntypedStorage",
    "torch.Size",
    "torch.device",
    "builtins.set",
    "builtins.frozenset",
    "__builtin__.set",
    "__builtin__.frozenset",
    "argparse.Namespace",
    "yacs.config.CfgNode",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "_codecs.encode",
];

/// `torch.<dtype>` names accepted: those the reader has an element type for, and their aliases.
const TORCH_DTYPES: &[&str] = &[
    "float32", "float", "float64", "double", "float16", "half", "bfloat16", "int64", "long", "int32", "int", "int16",
    "short", "int8", "uint8", "uint16", "uint32", "uint64", "bool",
];

fn allowed(module: &str, name: &str) -> bool {
    let torch_data = module == "torch" && (name.ends_with("Storage") || TORCH_DTYPES.contains(&name));
    torch_data || ALLOWED.iter().any(|g| g.strip_prefix(module).and_then(|r| r.strip_prefix('.')) == Some(name))
}

/// Reads the tensors of a PyTorch file whose container (`PthZip` or `PthLegacy`) was recognised by
/// its first bytes, after checking every global its pickles name against the allowlist.
pub(super) fn read_pth(path: &Path, format: TensorFormat) -> Result<TensorFile> {
    let scanned = match format {
        TensorFormat::PthLegacy => scan_legacy(path)?,
        _ => scan_zip(path)?,
    };
    if let Some((m, n)) = scanned.globals.iter().find(|(m, n)| !allowed(m, n)) {
        bail!(
            "'{}' names the Python global '{m}.{n}', which a weights file has no reason to hold; mim refused to read \
             it (nothing was executed). If you trust the file, load it in Python and re-save the state_dict with \
             torch.save(model.state_dict(), ...) or safetensors.",
            path.display()
        );
    }
    let copy = if scanned.needs_copy || scanned.globals.iter().any(|(m, n)| (m.as_str(), n.as_str()) == CFG_NODE) {
        let copy = rewritten_copy(path, &scanned);
        Some(copy.with_context(|| format!("cannot write the temporary copy mim reads '{}' through", path.display()))?)
    } else {
        None
    };
    let source = copy.as_ref().map_or(path, |c| c.path());
    let unreadable = |e: pytorch_reader::PytorchError| anyhow!("cannot read PyTorch file '{}': {e}", path.display());
    let root = PytorchReader::read_pickle_data(source, None).map_err(unreadable)?;
    let (nested, ignored) = select_weights(&root).with_context(|| format!("'{}'", path.display()))?;
    let reader = match &nested {
        Some(key) => PytorchReader::with_top_level_key(source, key),
        None => PytorchReader::new(source),
    }
    .map_err(unreadable)?;
    let mut tensors = TensorMap::new();
    for (name, t) in reader.into_tensors() {
        let values = to_f32(&t).with_context(|| format!("cannot read tensor '{name}' of '{}'", path.display()))?;
        tensors.insert(name, (t.shape().to_vec(), values));
    }
    if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
        tensors = tensors.into_iter().map(|(k, v)| (k["module.".len()..].to_string(), v)).collect();
    }
    Ok(TensorFile { tensors, format, nested, metadata: BTreeMap::new(), ignored })
}

/// Whether a value holds a tensor, directly or inside dicts and lists.
fn holds_tensor(v: &PickleValue) -> bool {
    match v {
        PickleValue::Unsupported(t) => t == "torch.Tensor",
        PickleValue::Dict(d) => d.values().any(holds_tensor),
        PickleValue::List(l) => l.iter().any(holds_tensor),
        _ => false,
    }
}

/// The entry holding the weights (`None`: the top level) and the top-level keys left out, sorted.
fn select_weights(root: &PickleValue) -> Result<(Option<String>, Vec<String>)> {
    let PickleValue::Dict(top) = root else {
        let kind = match root {
            PickleValue::List(_) => "list",
            PickleValue::Unsupported(t) => t,
            _ => "single value",
        };
        bail!("the file holds a {kind} rather than a dict of tensors");
    };
    let others = |keep: &dyn Fn(&str, &PickleValue) -> bool| {
        let mut v: Vec<String> = top.iter().filter(|(k, v)| !keep(k, v)).map(|(k, _)| k.clone()).collect();
        v.sort();
        v
    };
    for key in NESTED_KEYS {
        if let Some(v @ PickleValue::Dict(_)) = top.get(key)
            && holds_tensor(v)
        {
            return Ok((Some(key.to_string()), others(&|k, _| k == key)));
        }
    }
    ensure!(top.values().any(holds_tensor), "the file holds no tensors (top-level keys: {:?})", others(&|_, _| false));
    // `_metadata` is the version record `state_dict()` attaches, read back as an entry of the dict.
    Ok((None, others(&|k, v| holds_tensor(v) || k == "_metadata")))
}

/// A tensor's values as f32, whatever its element type (the reader hands native-endian bytes).
fn to_f32(t: &Tensor) -> Result<Vec<f32>> {
    let b = t.read()?;
    fn each<const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        b.chunks_exact(N).map(|c| f(c.try_into().expect("chunks_exact yields N bytes"))).collect()
    }
    Ok(match t.dtype() {
        DType::F32 => each(&b, f32::from_ne_bytes),
        DType::F64 => each(&b, |c| f64::from_ne_bytes(c) as f32),
        DType::F16 => each(&b, |c| f16_to_f32(u16::from_ne_bytes(c))),
        DType::BF16 => each(&b, |c| f32::from_bits((u16::from_ne_bytes(c) as u32) << 16)),
        DType::I64 => each(&b, |c| i64::from_ne_bytes(c) as f32),
        DType::I32 => each(&b, |c| i32::from_ne_bytes(c) as f32),
        DType::I16 => each(&b, |c| i16::from_ne_bytes(c) as f32),
        DType::I8 => each(&b, |c: [u8; 1]| c[0] as i8 as f32),
        DType::U64 => each(&b, |c| u64::from_ne_bytes(c) as f32),
        DType::U32 => each(&b, |c| u32::from_ne_bytes(c) as f32),
        DType::U16 => each(&b, |c| u16::from_ne_bytes(c) as f32),
        DType::U8 | DType::Bool => each(&b, |c: [u8; 1]| c[0] as f32),
    })
}

/// The one dict subclass in the allowlist, and what the rewritten copy builds in its place.
const CFG_NODE: (&str, &str) = ("yacs.config", "CfgNode");
const PLAIN_DICT: &[u8] = b"ccollections\nOrderedDict\n";

/// The pickles of a PyTorch file: the globals they name and their bytes, rewritten (see [`pickle_globals`]).
struct Scanned {
    globals: Vec<(String, String)>,
    pickle: Vec<u8>,
    /// The zip entry holding the pickle; `None` for a legacy file.
    entry: Option<String>,
    /// Where the storages start in a legacy file.
    end: u64,
    /// Whether pytorch-reader cannot open the zip archive itself (see [`open_zip`]).
    needs_copy: bool,
}

/// Opens a zip archive, saying whether it had to be told the archive starts at byte 0. The zip
/// crate's detection (9.9) misplaces the central directory of a `torch.save` file whose first entry
/// name is 30 bytes long, that is, whose archive folder has 21 characters (`mae_pretrain_vit_base/`),
/// and pytorch-reader, which detects, cannot open such a file.
fn open_zip(path: &Path) -> Result<(zip::ZipArchive<BufReader<File>>, bool)> {
    let open = |archive_offset| -> Result<_> {
        let file = BufReader::new(File::open(path)?);
        Ok(zip::ZipArchive::with_config(zip::read::Config { archive_offset }, file)?)
    };
    match open(zip::read::ArchiveOffset::Detect) {
        Ok(zip) => Ok((zip, false)),
        Err(e) => open(zip::read::ArchiveOffset::Known(0)).map(|zip| (zip, true)).map_err(|_| e),
    }
}

/// Scans `data.pkl` of a zip checkpoint: the entry ending in `data.pkl` with the shortest folder,
/// as the reader picks it.
fn scan_zip(path: &Path) -> Result<Scanned> {
    let (mut zip, needs_copy) = open_zip(path).with_context(|| {
        format!("'{}' starts like a zip archive (a PyTorch file) but is not a valid one (truncated?)", path.display())
    })?;
    let entry = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.strip_suffix("data.pkl").is_some_and(|root| root.is_empty() || root.ends_with('/')))
        .min_by_key(|n| n.len())
        .map(|n| n.into_owned())
        .ok_or_else(|| anyhow!("'{}' is a zip archive without a data.pkl: not a PyTorch file", path.display()))?;
    let mut pickle = Vec::new();
    let globals = zip
        .by_name(&entry)
        .map_err(anyhow::Error::from)
        .and_then(|f| pickle_globals(&mut BufReader::new(f), &mut pickle))
        .with_context(|| format!("cannot read '{entry}' in '{}'", path.display()))?;
    Ok(Scanned { globals, pickle, entry: Some(entry), end: 0, needs_copy })
}

/// The magic number 0x1950a86a20f9469cfc6c that opens a legacy file, as protocol 2 writes it.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// Scans the five pickles that open a legacy file (magic number, protocol, system info, the
/// object, the storage keys), up to the raw storages that follow them.
fn scan_legacy(path: &Path) -> Result<Scanned> {
    let mut r = BufReader::new(File::open(path).with_context(|| format!("cannot read '{}'", path.display()))?);
    let head = r.fill_buf()?;
    ensure!(
        head.len() > 16 && head[..16].windows(LEGACY_MAGIC.len()).any(|w| w == LEGACY_MAGIC),
        "'{}' starts like a pickle but not like a legacy torch.save file (no magic number): not a PyTorch file",
        path.display()
    );
    let (mut globals, mut pickle) = (Vec::new(), Vec::new());
    for part in ["magic number", "protocol", "system info", "object", "storage keys"] {
        let g = pickle_globals(&mut r, &mut pickle)
            .with_context(|| format!("cannot read the {part} pickle of '{}'", path.display()))?;
        globals.extend(g);
    }
    Ok(Scanned { globals, pickle, entry: None, end: r.stream_position()?, needs_copy: false })
}

/// A temporary copy of the file at `path` with its pickle replaced by the rewritten one, for
/// pytorch-reader to read when it cannot read the file itself.
fn rewritten_copy(path: &Path, scanned: &Scanned) -> Result<tempfile::NamedTempFile> {
    let mut out = tempfile::Builder::new().prefix("mim-").suffix(".pth").tempfile()?;
    match &scanned.entry {
        None => {
            let mut src = BufReader::new(File::open(path)?);
            out.write_all(&scanned.pickle)?;
            src.seek(SeekFrom::Start(scanned.end))?;
            io::copy(&mut src, &mut out)?;
        }
        Some(entry) => {
            let (mut zip, _) = open_zip(path)?;
            let mut w = zip::ZipWriter::new(BufWriter::new(out.as_file_mut()));
            for i in 0..zip.len() {
                let f = zip.by_index_raw(i)?;
                if f.name()? == entry.as_str() {
                    drop(f);
                    let stored = zip::write::SimpleFileOptions::default()
                        .compression_method(zip::CompressionMethod::Stored)
                        .large_file(scanned.pickle.len() > u32::MAX as usize);
                    w.start_file(entry.as_str(), stored)?;
                    w.write_all(&scanned.pickle)?;
                } else {
                    w.raw_copy_file(f)?;
                }
            }
            w.finish()?.flush()?;
        }
    }
    Ok(out)
}

/// How long an opcode's argument is.
enum Arg {
    Fixed(u64),
    /// A newline-terminated text.
    Line,
    /// A little-endian length of this many bytes, then that many bytes.
    Sized(u64),
}

fn arg(op: OpCode) -> Arg {
    use OpCode::*;
    match op {
        Proto | BinInt1 | BinGet | BinPut | Ext1 => Arg::Fixed(1),
        BinInt2 | Ext2 => Arg::Fixed(2),
        BinInt | LongBinGet | LongBinPut | Ext4 => Arg::Fixed(4),
        BinFloat | Frame => Arg::Fixed(8),
        Int | Long | Float | Unicode | Get | Put | PersId | Global => Arg::Line,
        Long1 | ShortBinString | ShortBinUnicode | ShortBinBytes => Arg::Sized(1),
        Long4 | BinString | BinUnicode | BinBytes => Arg::Sized(4),
        BinUnicode8 | BinBytes8 | ByteArray8 => Arg::Sized(8),
        _ => Arg::Fixed(0),
    }
}

/// Copies exactly `n` bytes of `r` to `out`, refusing to let `out` grow past `MAX_PICKLE_SIZE`.
fn copy_exact(r: &mut impl BufRead, out: &mut Vec<u8>, n: u64) -> Result<()> {
    let room = MAX_PICKLE_SIZE.saturating_sub(out.len() as u64);
    ensure!(n <= room, "the pickle is larger than {MAX_PICKLE_SIZE} bytes");
    ensure!(r.take(n).read_to_end(out)? as u64 == n, "the pickle ends inside a value (truncated file?)");
    Ok(())
}

/// Copies a newline-terminated text of `r` to `out` and returns it without the newline.
fn copy_line<'a>(r: &mut impl BufRead, out: &'a mut Vec<u8>) -> Result<&'a [u8]> {
    let start = out.len();
    let n = r.take(MAX_PICKLE_SIZE.saturating_sub(start as u64)).read_until(b'\n', out)?;
    ensure!(n > 0 && out.last() == Some(&b'\n'), "the pickle ends inside a text argument (truncated file?)");
    Ok(&out[start..out.len() - 1])
}

/// Walks one pickle up to its `STOP` opcode, as `pickletools` does, without building any value,
/// and returns the globals it names as (module, name). A `STACK_GLOBAL` takes its operands from the
/// top of the stack, so the strings on top are tracked (pushed literally or fetched from the memo);
/// any opcode not modelled here forgets them, which can only make a `STACK_GLOBAL` unverifiable.
///
/// The pickle's bytes are appended to `out`, rewritten so that pytorch-reader builds a yacs
/// CfgNode as a plain dict: the class becomes `collections.OrderedDict` and every `NEWOBJ` a
/// `REDUCE`, which the reader treats alike for any other class. No offset in a pickle depends on
/// these lengths (the reader ignores `FRAME` sizes).
fn pickle_globals(r: &mut impl BufRead, out: &mut Vec<u8>) -> Result<Vec<(String, String)>> {
    let mut globals = Vec::new();
    // The known top of the stack, bottom first: `Some` for a string, `None` for anything else.
    let mut top: Vec<Option<String>> = Vec::new();
    let mut memo: HashMap<u32, Option<String>> = HashMap::new();
    let text = |b: &[u8]| std::str::from_utf8(b).ok().map(str::to_string);
    loop {
        let start = out.len();
        copy_exact(r, out, 1).context("the pickle ends before its STOP opcode (truncated file?)")?;
        let op =
            OpCode::try_from(out[start]).map_err(|b| anyhow!("byte 0x{b:02x} is not a pickle opcode mim reads"))?;
        let payload = match arg(op) {
            Arg::Fixed(n) => {
                copy_exact(r, out, n)?;
                start + 1..out.len()
            }
            Arg::Line => {
                let n = copy_line(r, out)?.len();
                start + 1..start + 1 + n
            }
            Arg::Sized(width) => {
                copy_exact(r, out, width)?;
                let mut len = [0u8; 8];
                len[..width as usize].copy_from_slice(&out[start + 1..]);
                copy_exact(r, out, u64::from_le_bytes(len))?;
                start + 1 + width as usize..out.len()
            }
        };
        let short = |p: &[u8]| (p.len() as u64 <= MAX_NAME).then(|| text(p)).flatten();
        let index = |p: &[u8]| -> Result<u32> {
            let i = match op {
                OpCode::Get | OpCode::Put => text(p).and_then(|s| s.parse().ok()),
                _ => Some(p.iter().rev().fold(0, |acc, &x| (acc << 8) | x as u32)),
            };
            i.ok_or_else(|| anyhow!("a memo index in the pickle is not a number"))
        };
        let mut named = |module: Option<String>, name: Option<String>, out: &mut Vec<u8>, lead: &[u8]| {
            let (Some(module), Some(name)) = (module, name) else {
                bail!("a {op:?}'s module and name are not short strings, so what it names cannot be verified");
            };
            if (module.as_str(), name.as_str()) == CFG_NODE {
                out.truncate(start);
                out.extend_from_slice(lead);
                out.extend_from_slice(PLAIN_DICT);
            }
            globals.push((module, name));
            Ok(())
        };
        match op {
            OpCode::Stop => return Ok(globals),
            OpCode::Proto | OpCode::Frame => {}
            OpCode::Global => {
                let module = short(&out[payload]);
                let name = short(copy_line(r, out)?);
                named(module, name, out, b"")?;
                top.push(None);
            }
            OpCode::StackGlobal => {
                let (name, module) = (top.pop().flatten(), top.pop().flatten());
                // Two POPs and a GLOBAL take the place of a rewritten STACK_GLOBAL.
                named(module, name, out, b"00")?;
                top.push(None);
            }
            OpCode::NewObj => {
                out[start] = b'R';
                top.clear();
            }
            OpCode::Ext1 | OpCode::Ext2 | OpCode::Ext4 => {
                bail!("the pickle names a global through the extension registry ({op:?}), which cannot be verified")
            }
            OpCode::ShortBinUnicode
            | OpCode::BinUnicode
            | OpCode::BinUnicode8
            | OpCode::ShortBinString
            | OpCode::BinString => top.push(short(&out[payload])),
            OpCode::Get | OpCode::BinGet | OpCode::LongBinGet => {
                top.push(memo.get(&index(&out[payload])?).cloned().flatten())
            }
            OpCode::Put | OpCode::BinPut | OpCode::LongBinPut => {
                memo.insert(index(&out[payload])?, top.last().cloned().flatten());
            }
            OpCode::Memoize => {
                memo.insert(memo.len() as u32, top.last().cloned().flatten());
            }
            _ => top.clear(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(bytes: &[u8]) -> Result<Vec<String>> {
        Ok(pickle_globals(&mut &bytes[..], &mut Vec::new())?.into_iter().map(|(m, n)| format!("{m}.{n}")).collect())
    }

    #[test]
    fn globals_are_found_through_global_and_stack_global() {
        // protocol 2: GLOBAL 'os system', EMPTY_TUPLE, REDUCE.
        assert_eq!(scan(b"\x80\x02cos\nsystem\nq\x00)R.").unwrap(), ["os.system"]);
        // protocol 4: the two strings memoized, popped, fetched back (BINGET) and joined.
        let p = b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x940\x30h\x00h\x01\x93.";
        assert_eq!(scan(p).unwrap(), ["builtins.eval"]);
        // A string inside a value is not an opcode: 'c' in BINUNICODE's payload is skipped over.
        assert_eq!(scan(b"X\x0b\x00\x00\x00cos\nsystem\n.").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_stack_global_on_anything_but_strings_is_refused() {
        for p in [&b"\x80\x04NN\x93."[..], b"\x80\x04\x8c\x02os\x8c\x06system2\x93.", b"\x80\x04h\x05h\x06\x93."] {
            let err = format!("{:#}", scan(p).unwrap_err());
            assert!(err.contains("cannot be verified"), "{err}");
        }
    }

    #[test]
    fn a_truncated_or_foreign_pickle_is_an_error() {
        for p in [
            &b"\x80\x02cos\nsys"[..],
            b"\x80\x02X\xff\xff\xff\xff",
            b"\x80\x02",
            b"i__main__\nX\n.",
            b"\x80\x02\x82\x01.",
            b"I1\nc", // from the fuzz test: a GLOBAL with nothing after it, a newline before it
        ] {
            assert!(scan(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn the_allowlist_holds_what_torch_save_writes_and_nothing_else() {
        for (m, n) in [("torch._utils", "_rebuild_tensor_v2"), ("torch", "BFloat16Storage"), ("torch", "float16")] {
            assert!(allowed(m, n), "{m}.{n}");
        }
        for (m, n) in
            [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("torch", "load"), ("torch._utils", "x")]
        {
            assert!(!allowed(m, n), "{m}.{n}");
        }
        assert!(!allowed("collections", "OrderedDict.x") && !allowed("collections.Ordered", "Dict"));
    }

    fn dict(items: &[(&str, PickleValue)]) -> PickleValue {
        PickleValue::Dict(items.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn the_weights_are_found_under_the_preferred_key_or_at_the_top() {
        let t = PickleValue::Unsupported("torch.Tensor".into());
        let sd = dict(&[("w", t.clone())]);
        let ckpt = dict(&[("model_ema", sd.clone()), ("state_dict", sd.clone()), ("epoch", PickleValue::Int(3))]);
        assert_eq!(
            select_weights(&ckpt).unwrap(),
            (Some("state_dict".into()), vec!["epoch".into(), "model_ema".into()])
        );
        // 'model' holding no tensors is passed over.
        let ckpt = dict(&[("model", dict(&[])), ("module", sd.clone())]);
        assert_eq!(select_weights(&ckpt).unwrap(), (Some("module".into()), vec!["model".into()]));
        let top = dict(&[("w", t), ("_metadata", dict(&[])), ("step", PickleValue::Int(1))]);
        assert_eq!(select_weights(&top).unwrap(), (None, vec!["step".into()]));
        assert!(select_weights(&dict(&[("epoch", PickleValue::Int(3))])).is_err());
        assert!(select_weights(&PickleValue::List(vec![])).is_err());
    }
}
