//! Rotary position embedding in the Hugging Face "rotate-half" layout:
//! for i < R/2, the pair (x[i], x[i + R/2]) is rotated by angle `pos * theta^(-2i/R)`,
//! where R <= Dh is the number of rotary dims (partial rotary leaves dims >= R untouched).
//! GGUF llama files store Q/K rows permuted for llama.cpp's adjacent-pair layout; the model
//! loader undoes that permutation so one layout serves GGUF and safetensors alike.

#[derive(Clone, Debug)]
pub struct Rope {
    pub head_dim: usize,
    pub rot_dims: usize,
    theta_scale: f32,
}

impl Rope {
    pub fn new(head_dim: usize, rot_dims: usize, theta: f64) -> Self {
        assert!(rot_dims <= head_dim && rot_dims.is_multiple_of(2));
        let theta_scale = (theta as f32).powf(-2.0 / rot_dims as f32);
        Rope {
            head_dim,
            rot_dims,
            theta_scale,
        }
    }

    /// cos/sin tables for one position: each of length R/2. Computed in f32 the way ggml's
    /// `rope_cache_init` does (angle multiplied by `theta^(-2/R)` step by step), so rotations
    /// round exactly like llama.cpp's.
    pub fn cos_sin(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        let scale = self.theta_scale;
        let mut a = pos as f32;
        (0..self.rot_dims / 2)
            .map(|_| {
                let cs = (a.cos(), a.sin());
                a *= scale;
                cs
            })
            .unzip()
    }

    /// Rotates x: [T, nh, Dh] in place; token t sits at position `pos0 + t`. Each rotated
    /// value is one fused multiply-add of two products, as GCC contracts ggml's `rope_f32`.
    pub fn apply(&self, x: &mut [f32], nh: usize, pos0: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_fma() {
                // SAFETY: FMA presence checked at run time just above.
                return unsafe { self.apply_fma(x, nh, pos0) };
            }
        }
        self.apply_inner(x, nh, pos0)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn apply_fma(&self, x: &mut [f32], nh: usize, pos0: usize) {
        self.apply_inner(x, nh, pos0)
    }

    #[inline(always)]
    fn apply_inner(&self, x: &mut [f32], nh: usize, pos0: usize) {
        let dh = self.head_dim;
        let half = self.rot_dims / 2;
        for (t, tok) in x.chunks_exact_mut(nh * dh).enumerate() {
            let (cos, sin) = self.cos_sin(pos0 + t);
            for head in tok.chunks_exact_mut(dh) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a.mul_add(cos[i], -(b * sin[i]));
                    head[i + half] = a.mul_add(sin[i], b * cos[i]);
                }
            }
        }
    }

    /// Reorders the rotary dims of each head of x: [T, nh, Dh] from this layout (pair i at
    /// i and i + R/2) to llama.cpp's GGUF layout (pair i at 2i and 2i + 1). Attention is
    /// blind to the order of head dims, but the rounding of llama.cpp's q·k sums follows it.
    pub fn to_adjacent_pairs(&self, x: &mut [f32], nh: usize) {
        let half = self.rot_dims / 2;
        let mut tmp = vec![0f32; self.rot_dims];
        for head in x.chunks_exact_mut(self.head_dim) {
            for i in 0..half {
                tmp[2 * i] = head[i];
                tmp[2 * i + 1] = head[i + half];
            }
            head[..self.rot_dims].copy_from_slice(&tmp);
        }
        debug_assert_eq!(x.len() % (nh * self.head_dim), 0);
    }

    /// Backward of [`Rope::apply`] (the inverse rotation, applied to the gradient).
    pub fn apply_backward(&self, dx: &mut [f32], nh: usize, pos0: usize) {
        let dh = self.head_dim;
        let half = self.rot_dims / 2;
        for (t, tok) in dx.chunks_exact_mut(nh * dh).enumerate() {
            let (cos, sin) = self.cos_sin(pos0 + t);
            for head in tok.chunks_exact_mut(dh) {
                for i in 0..half {
                    let (a, b) = (head[i], head[i + half]);
                    head[i] = a * cos[i] + b * sin[i];
                    head[i + half] = b * cos[i] - a * sin[i];
                }
            }
        }
    }
}
