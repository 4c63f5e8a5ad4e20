//! Parameter freezing per module: a parameter is frozen when its checkpoint name contains any
//! of the given patterns (`mlp.`, `embed_tokens`, `norm`, `layers.3.`, ...). Frozen parameters
//! keep their values and get no optimizer state.

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Freeze {
    pub patterns: Vec<String>,
}

impl Freeze {
    /// Parses a comma-separated list; empty entries are ignored.
    pub fn parse(spec: &str) -> Self {
        Freeze {
            patterns: spec
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    pub fn is_frozen(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| name.contains(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_modules_by_name() {
        let f = Freeze::parse("mlp., embed_tokens,,model.norm");
        assert!(f.is_frozen("model.layers.0.mlp.up_proj.weight"));
        assert!(f.is_frozen("model.embed_tokens.weight"));
        assert!(f.is_frozen("model.norm.weight"));
        assert!(!f.is_frozen("model.layers.0.self_attn.q_proj.weight"));
        assert!(!Freeze::default().is_frozen("anything"));
    }
}
