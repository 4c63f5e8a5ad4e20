//! Finding the NVIDIA libraries at run time, so that the binary builds on machines with no
//! CUDA toolkit and runs wherever a driver is installed.
//!
//! cudarc opens libraries by file name (what `dlopen` finds through LD_LIBRARY_PATH and the
//! system cache). Before it does, we look in the places users actually have them —
//! `$CUDA_HOME`/`$CUDA_PATH`, `/usr/local/cuda*`, pip's `nvidia-*` wheels in the Python
//! site-packages, the driver folders — and open what we find by full path. The loaded
//! library then satisfies cudarc's later open by name. A missing library becomes one
//! sentence naming it and where we looked, instead of cudarc's panic.
use std::path::PathBuf;
use std::sync::OnceLock;

/// The libraries the CUDA backend needs, by file-name prefix.
pub const DRIVER: &str = "libcuda.so";
pub const NVRTC: &str = "libnvrtc.so";
pub const CUBLAS: &str = "libcublas.so";
pub const CUBLASLT: &str = "libcublasLt.so";
pub const NCCL: &str = "libnccl.so";

/// Folders searched, in order, after the dynamic loader's own search.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(p) = std::env::var_os(var) {
            let p = PathBuf::from(p);
            dirs.push(p.join("lib64"));
            dirs.push(p.join("lib"));
            dirs.push(p.join("targets/x86_64-linux/lib"));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/local") {
        let mut cudas: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("cuda"))
            })
            .collect();
        cudas.sort();
        cudas.reverse(); // newest version first
        for c in cudas {
            dirs.push(c.join("lib64"));
            dirs.push(c.join("targets/x86_64-linux/lib"));
        }
    }
    // pip wheels: site-packages/nvidia/{cuda_nvrtc,cublas,...}/lib
    for sp in python_site_packages() {
        if let Ok(rd) = std::fs::read_dir(sp.join("nvidia")) {
            for e in rd.filter_map(|e| e.ok()) {
                dirs.push(e.path().join("lib"));
            }
        }
    }
    for d in [
        "/usr/local/nvidia/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

fn python_site_packages() -> Vec<PathBuf> {
    let mut out = vec![];
    for base in ["/usr/lib", "/usr/local/lib", "/opt/conda/lib"]
        .iter()
        .map(PathBuf::from)
        .chain(std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("lib")))
    {
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.filter_map(|e| e.ok()) {
                let n = e.file_name().to_string_lossy().to_string();
                if n.starts_with("python3") {
                    out.push(e.path().join("site-packages"));
                    out.push(e.path().join("dist-packages"));
                }
            }
        }
    }
    out
}

/// The first file in `dirs` whose name starts with `prefix` (`libnvrtc.so.13` before `libnvrtc.so`).
fn find_in(dirs: &[PathBuf], prefix: &str) -> Option<PathBuf> {
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        let mut hits: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .filter(|p| !p.to_string_lossy().contains("alt"))
            .collect();
        hits.sort();
        if let Some(h) = hits.into_iter().last() {
            return Some(h);
        }
    }
    None
}

/// Where a library was found: by the loader's own search, or by path.
#[derive(Clone, Debug)]
pub enum Found {
    Loader(String),
    Path(PathBuf),
}

fn try_open(prefix: &str) -> Option<Found> {
    // The dynamic loader first (LD_LIBRARY_PATH, the system cache): the usual names.
    for name in [
        format!("{prefix}.1"),
        format!("{prefix}.13"),
        format!("{prefix}.12"),
        prefix.to_string(),
    ] {
        // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's.
        if let Ok(lib) = unsafe { libloading::Library::new(&name) } {
            std::mem::forget(lib); // stays loaded for cudarc
            return Some(Found::Loader(name));
        }
    }
    let path = find_in(&search_dirs(), prefix)?;
    // SAFETY: as above.
    let lib = unsafe { libloading::Library::new(&path) }.ok()?;
    std::mem::forget(lib);
    Some(Found::Path(path))
}

/// Opens every library the backend needs, once; the error is one sentence.
pub fn ensure_loaded() -> Result<&'static [(String, Found)], String> {
    static LOADED: OnceLock<Result<Vec<(String, Found)>, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut out = vec![];
            for lib in [DRIVER, NVRTC, CUBLASLT, CUBLAS] {
                match try_open(lib) {
                    Some(f) => out.push((lib.to_string(), f)),
                    None if lib == DRIVER => {
                        return Err("no NVIDIA driver found (libcuda.so): this machine has no usable GPU; use --device cpu".to_string())
                    }
                    None => {
                        let dirs: Vec<String> = search_dirs().iter().map(|d| d.display().to_string()).collect();
                        return Err(format!(
                            "the NVIDIA library {lib}* was not found by the dynamic loader nor in [{}]; install it (e.g. pip install nvidia-cuda-nvrtc-cu12 nvidia-cublas-cu12) or set CUDA_HOME",
                            dirs.join(", ")
                        ));
                    }
                }
            }
            Ok(out)
        })
        .as_ref()
        .map(|v| v.as_slice())
        .map_err(|e| e.clone())
}

/// True when a driver library can be opened (cheap; used to pick the default device).
pub fn driver_present() -> bool {
    try_open(DRIVER).is_some()
}

/// Opens NCCL for multi-GPU work (only then: one GPU needs no NCCL). cudarc opens it by the
/// names `libnccl.so`, `libnccl.so.13`, `.12`, …, not by its soname `libnccl.so.2` alone, so a
/// copy found only as `libnccl.so.2` (pip's nvidia-nccl wheels) needs a `libnccl.so` link.
pub fn ensure_nccl() -> Result<(), String> {
    ensure_loaded()?;
    // SAFETY: loading NVIDIA's NCCL runs its initialisers, nothing else.
    if unsafe { cudarc::nccl::sys::is_culib_present() } {
        return Ok(());
    }
    match find_in(&search_dirs(), NCCL) {
        Some(p) => Err(format!(
            "NCCL is at {} but the dynamic loader cannot open it as libnccl.so; add a libnccl.so link to it in a folder on LD_LIBRARY_PATH",
            p.display()
        )),
        None => Err("NCCL (libnccl.so) was not found; multi-GPU work needs it: install libnccl2 or pip install nvidia-nccl-cu13 and put its lib folder on LD_LIBRARY_PATH".to_string()),
    }
}
