//! Tensor parallelism is a GPU feature: an engine configuration that splits a model on the
//! CPU, over no ranks, or over more ranks than a layer has heads is refused with a sentence
//! naming the problem, before anything starts (the split itself is tested in
//! model/tests/tensor_parallel.rs, and on two GPUs in model/tests/hybrid_gpu_tp.rs).
use engine::EngineConfig;
use model::hybrid::{HybridConfig, HybridModel};

#[test]
fn the_cpu_and_too_many_ranks_are_refused() {
    let m = HybridModel::init(HybridConfig::small("fa,gdn", 50).unwrap(), 3).unwrap();
    let check = |tensor_parallel, device| {
        EngineConfig {
            tensor_parallel,
            device,
            ..Default::default()
        }
        .check_tensor_parallel(&m)
    };
    let cpu = tensor::Device::Cpu;
    let gpu = tensor::Device::Cuda(0);
    let e = check(2, cpu).unwrap_err().to_string();
    assert!(e.contains("--device cpu"), "{e}");
    // HybridConfig::small has 2 key/value heads and 2 linear q/k heads.
    let e = check(4, gpu).unwrap_err().to_string();
    assert!(e.contains("layer 0 has 2"), "{e}");
    let e = check(0, gpu).unwrap_err().to_string();
    assert!(e.contains("at least 1"), "{e}");
    assert!(check(1, cpu).is_ok());
    assert!(check(2, gpu).is_ok());
}

#[test]
fn split_invariance_needs_a_gpu_and_a_power_of_two_group() {
    let config = HybridConfig {
        num_attention_heads: 6,
        num_key_value_heads: 3,
        linear_num_key_heads: Some(3),
        linear_num_value_heads: Some(3),
        ..HybridConfig::small("fa,gdn", 50).unwrap()
    };
    let m = HybridModel::init(config, 3).unwrap();
    let check = |tensor_parallel, device| {
        EngineConfig {
            tensor_parallel,
            device,
            split_invariant: true,
            ..Default::default()
        }
        .check_tensor_parallel(&m)
    };
    let gpu = tensor::Device::Cuda(0);
    // Three ranks split the heads fine, but not the summation tree evenly.
    let e = check(3, gpu).unwrap_err().to_string();
    assert!(e.contains("power-of-two") && e.contains("got 3"), "{e}");
    let e = check(1, tensor::Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("GPU mode"), "{e}");
    assert!(check(1, gpu).is_ok());
    assert!(check(2, gpu).is_ok());
}
