//! `hybrid cost`: a calibrated time and memory model of FA, hybrid and Delethink serving, from
//! a model's config alone (the cost-model issue). `arch` describes models (presets and
//! `config.json`), `time` turns them into seconds on a measured machine profile,
//! `calibrate` fits that profile to this project's H200 runs and checks it against the runs
//! it was not fitted to, `workload` answers the article's question.
pub mod arch;
pub mod calibrate;
pub mod config;
pub mod presets;
pub mod time;
pub mod workload;
