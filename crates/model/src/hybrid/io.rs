//! Save and load a hybrid model as a Hugging Face-style folder: `config.json` plus
//! `model.safetensors` (f32 tensors under checkpoint names). Loading accepts f32, bf16 and
//! f16 tensors and checks every expected tensor's presence and shape.
use super::{Block, HybridConfig, HybridModel, LayerKind, Mixer};
use anyhow::{bail, Context, Result};
use mixers::attention::Attention;
use mixers::linear_mixer::LinearMixer;
use mixers::params::Params;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::path::Path;

impl HybridModel {
    /// All parameters under their checkpoint names.
    pub fn named_params(&self) -> Params {
        let mut all = self.top.clone();
        for (i, b) in self.blocks.iter().enumerate() {
            all.map
                .extend(b.params.clone().prefixed(&format!("model.layers.{i}.")).map);
            all.map.extend(
                b.mixer
                    .params()
                    .clone()
                    .prefixed(&format!("model.layers.{i}.{}", b.mixer.prefix()))
                    .map,
            );
        }
        all
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created if needed). Files are
    /// written under temporary names and renamed, so an interrupted save leaves the old ones.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        write_params(&dir.join("model.safetensors"), &self.named_params())?;
        let tmp = dir.join(".config.json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&self.config)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join("config.json"))?;
        Ok(())
    }

    /// Loads a folder written by [`HybridModel::save`] (or any checkpoint with these names).
    pub fn load(dir: &Path) -> Result<Self> {
        let config = HybridConfig::from_file(&dir.join("config.json"))?;
        Self::load_weights(dir, config)
    }

    /// The weights of `dir` for a model of `config`: `model.safetensors`, or the shards
    /// `model.safetensors.index.json` names; f32, bf16 or f16. Every tensor the model needs
    /// must be there with its shape, and every tensor there must be one the model uses (a
    /// leftover means a part of the checkpoint this model would silently drop).
    pub fn load_weights(dir: &Path, config: HybridConfig) -> Result<Self> {
        Self::load_weights_with(dir, config, |_| Ok(()))
    }

    /// [`HybridModel::load_weights`] after `remap` has turned the checkpoint's tensors into
    /// ours (a Hugging Face family's packed projections split, norms re-based, names changed).
    pub fn load_weights_with(
        dir: &Path,
        config: HybridConfig,
        remap: impl FnOnce(&mut Tensors) -> Result<()>,
    ) -> Result<Self> {
        let tensors = read_tensors(dir)?;
        Self::from_tensors(dir, tensors, config, remap)
    }

    /// [`HybridModel::load_weights_with`] on tensors already read (`dir` names them in errors).
    pub fn from_tensors(
        dir: &Path,
        mut tensors: Tensors,
        config: HybridConfig,
        remap: impl FnOnce(&mut Tensors) -> Result<()>,
    ) -> Result<Self> {
        remap(&mut tensors)?;
        check_fits_checkpoint(dir, &config, &tensors)?;
        // Start from an initialised model for the names and shapes, then fill every tensor.
        let mut m = HybridModel::init(config, 0)?;
        let mut fill = |name: &str, p: &mut mixers::params::Param| -> Result<()> {
            // Taken out of the map: what is left at the end is what the model does not use.
            let (shape, data) = tensors
                .remove(name)
                .with_context(|| format!("{}: tensor '{name}' is missing", dir.display()))?;
            // Conv weights may be stored [C, 1, W], per-head vectors [1, 1, H, 1].
            let squeezed: Vec<usize> = shape
                .iter()
                .copied()
                .filter(|&d| d != 1 || p.shape.contains(&1))
                .collect();
            if shape != p.shape && squeezed != p.shape {
                bail!(
                    "{}: tensor '{name}' has shape {shape:?}, expected {:?}",
                    dir.display(),
                    p.shape
                );
            }
            p.data = data;
            Ok(())
        };
        for (k, p) in m.top.map.iter_mut() {
            fill(k, p)?;
        }
        for (i, b) in m.blocks.iter_mut().enumerate() {
            for (k, p) in b.params.map.iter_mut() {
                fill(&format!("model.layers.{i}.{k}"), p)?;
            }
            let pre = b.mixer.prefix();
            for (k, p) in b.mixer.params_mut().map.iter_mut() {
                fill(&format!("model.layers.{i}.{pre}{k}"), p)?;
            }
        }
        let unused: Vec<&String> = tensors
            .keys()
            .filter(|k| !k.ends_with("rotary_emb.inv_freq"))
            .collect();
        if let Some(first) = unused.first() {
            bail!(
                "{}: tensor '{first}' ({} unused in all) is not part of this model: the checkpoint has parts it does not map",
                dir.display(),
                unused.len()
            );
        }
        Ok(m)
    }
}

/// A checkpoint's tensors by name: shape and values in f32.
pub type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// A model is filled from distinct checkpoint tensors of its own sizes, so one that needs
/// more values or tensors than the checkpoint holds cannot load: refused here, before
/// [`HybridModel::init`] would allocate what `config.json` claims.
fn check_fits_checkpoint(dir: &Path, config: &HybridConfig, tensors: &Tensors) -> Result<()> {
    let need = config.param_count()?;
    let values: usize = tensors.values().map(|(_, d)| d.len()).sum();
    if need.values > values || need.tensors > tensors.len() {
        bail!(
            "{}: config.json describes {} values in {} tensors, but the checkpoint holds {values} in {}",
            dir.display(),
            need.values,
            need.tensors,
            tensors.len()
        );
    }
    Ok(())
}

/// Every tensor of a checkpoint folder (one file or shards), in f32.
pub fn read_tensors(dir: &Path) -> Result<Tensors> {
    let mut out = Tensors::new();
    for path in safetensors_files(dir)? {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        add_safetensors(&mut out, &bytes, &path)?;
    }
    Ok(out)
}

/// Adds the tensors of one safetensors file's bytes to `out`, in f32 (`path` names the file
/// in errors).
pub fn add_safetensors(out: &mut Tensors, bytes: &[u8], path: &Path) -> Result<()> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    for (name, t) in st.tensors() {
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::BF16 => t
                .data()
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F16 => t
                .data()
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => bail!(
                "{}: tensor '{name}' has dtype {other:?} (f32, bf16, f16 are supported)",
                path.display()
            ),
        };
        out.insert(name, (t.shape().to_vec(), data));
    }
    Ok(())
}

/// The safetensors files of a checkpoint folder: `model.safetensors`, or the distinct shards
/// of `model.safetensors.index.json`'s `weight_map`.
fn safetensors_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if single.exists() {
        return Ok(vec![single]);
    }
    if !index.exists() {
        bail!(
            "{}: neither model.safetensors nor model.safetensors.index.json is there",
            dir.display()
        );
    }
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&index)
            .with_context(|| format!("cannot read {}", index.display()))?,
    )
    .with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: 'weight_map' is missing", index.display()))?;
    let mut files: Vec<String> = map
        .values()
        .map(|f| {
            f.as_str().map(str::to_string).with_context(|| {
                format!("{}: weight_map values must be file names", index.display())
            })
        })
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            if f.contains('/') || f.contains("..") {
                bail!(
                    "{}: shard name '{f}' must be a file in the folder",
                    index.display()
                );
            }
            Ok(dir.join(f))
        })
        .collect()
}

/// Builds blocks from given parameters (used by conversion from a teacher).
pub fn block_from(kind: LayerKind, mixer_params: Params, params: Params) -> Block {
    let mixer = match kind {
        LayerKind::Attention(c) => Mixer::Attention(Attention::new(c, mixer_params)),
        LayerKind::Linear(c) => Mixer::Linear(LinearMixer::new(c, mixer_params)),
    };
    Block { mixer, params }
}

/// Writes `params` (f32) as one safetensors file, through a temporary name and a rename.
pub fn write_params(path: &Path, params: &Params) -> Result<()> {
    let bytes: BTreeMap<&String, Vec<u8>> = params
        .map
        .iter()
        .map(|(k, p)| (k, p.data.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView)> = params
        .map
        .iter()
        .map(|(k, p)| {
            Ok((
                k.clone(),
                TensorView::new(Dtype::F32, p.shape.clone(), &bytes[k])?,
            ))
        })
        .collect::<Result<_>>()?;
    let data = safetensors::serialize(views, None)?;
    let tmp = path.with_extension("tmp");
    if let Err(e) = std::fs::write(&tmp, &data).and_then(|_| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

impl HybridModel {
    /// Only the token mixers' parameters, under checkpoint names (`model.layers.{i}.self_attn.*`
    /// or `...linear_attn.*`): a conversion candidate without the teacher's MLPs and embeddings.
    pub fn save_mixers(&self, path: &Path) -> Result<()> {
        let mut all = Params::default();
        for (i, b) in self.blocks.iter().enumerate() {
            all.map.extend(
                b.mixer
                    .params()
                    .clone()
                    .prefixed(&format!("model.layers.{i}.{}", b.mixer.prefix()))
                    .map,
            );
        }
        write_params(path, &all)
    }

    /// Fills every mixer's parameters from a file written by [`HybridModel::save_mixers`]
    /// for a model of the same layout.
    pub fn load_mixers(&mut self, path: &Path) -> Result<()> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let pre = b.mixer.prefix();
            for (k, p) in b.mixer.params_mut().map.iter_mut() {
                let name = format!("model.layers.{i}.{pre}{k}");
                let t = st
                    .tensor(&name)
                    .with_context(|| format!("{}: tensor '{name}' is missing", path.display()))?;
                if t.shape() != p.shape.as_slice() || t.dtype() != Dtype::F32 {
                    bail!(
                        "{}: tensor '{name}' is {:?} {:?}, expected F32 {:?}",
                        path.display(),
                        t.dtype(),
                        t.shape(),
                        p.shape
                    );
                }
                p.data = t
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
            }
        }
        Ok(())
    }
}
