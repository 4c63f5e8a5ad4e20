//! Free disk space, checked before each `convert` stage writes its outputs: a stage that runs
//! for minutes and then dies on a full disk wastes the minutes (its outputs are written
//! through temporary names, so it never leaves a half-written stage either way).
use anyhow::{bail, Result};
use std::path::Path;

/// Bytes available to this user on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| anyhow::anyhow!("{}: a path with a NUL byte", dir.display()))?;
    // SAFETY: `c` is a NUL-terminated path; statvfs fills the zeroed struct it is given.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        bail!(
            "cannot read the free space of {}: {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Refuses to start `stage` when `dir` has less than `need` bytes free, naming both.
pub fn check_free(dir: &Path, need: u64, stage: &str) -> Result<()> {
    let free = free_bytes(dir)?;
    if free < need {
        bail!(
            "the '{stage}' stage needs about {:.2} GiB free in {}, and {:.2} GiB are; free some space and rerun (finished stages are kept)",
            need as f64 / (1u64 << 30) as f64,
            dir.display(),
            free as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}

/// What a conversion of `teacher` may write at most in one stage: a hybrid model folder and
/// the candidates' mixers, both f32 (two copies of the teacher's parameters), and a margin.
pub fn stage_bytes(teacher: &model::llama::LlamaConfig) -> u64 {
    let c = teacher;
    let (d, q, kv) = (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
    let layer = d * q * 2 + d * kv * 2 + 3 * d * c.ffn + 2 * d;
    let params = c.vocab_size * d * if c.tied_embeddings { 1 } else { 2 } + c.n_layers * layer;
    (params as u64) * 4 * 2 + (256 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_that_does_not_fit_is_refused_with_both_sizes() {
        let dir = std::env::temp_dir();
        assert!(free_bytes(&dir).unwrap() > 0);
        let e = check_free(&dir, u64::MAX / 2, "distil")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("'distil' stage needs about") && e.contains("GiB are"),
            "{e}"
        );
        check_free(&dir, 1, "distil").unwrap();
        assert!(free_bytes(Path::new("/no/such/folder")).is_err());
    }
}
