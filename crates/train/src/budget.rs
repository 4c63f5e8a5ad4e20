//! The conversion budget: how much full attention a hybrid may keep. Either type counts
//! (`fa=2,swa=4`: the rest become linear mixers) or a cost fraction (`cost=0.15`: the layout's
//! decode cost under the cost model, as a share of the all-FA teacher's).
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Budget {
    Counts { fa: usize, swa: usize },
    Cost(f64),
}

impl Budget {
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if let Some(c) = spec.strip_prefix("cost=") {
            let f: f64 = c.parse().map_err(|_| {
                anyhow::anyhow!("budget '{spec}': cost= takes a number such as 0.15")
            })?;
            if !(f > 0.0 && f <= 1.0) {
                bail!("budget '{spec}': the cost fraction must be in (0, 1]");
            }
            return Ok(Budget::Cost(f));
        }
        let (mut fa, mut swa) = (None, None);
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "budget '{spec}': '{part}' is not key=value (fa=2,swa=4 or cost=0.15)"
                )
            })?;
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("budget '{spec}': '{v}' is not a layer count"))?;
            match k.trim() {
                "fa" => fa = Some(n),
                "swa" => swa = Some(n),
                other => bail!("budget '{spec}': unknown key '{other}' (fa, swa, or cost)"),
            }
        }
        if fa.is_none() && swa.is_none() {
            bail!("budget '{spec}' is empty: give fa=N[,swa=M] or cost=F");
        }
        Ok(Budget::Counts {
            fa: fa.unwrap_or(0),
            swa: swa.unwrap_or(0),
        })
    }

    /// Checks the budget against a teacher of `layers` layers.
    pub fn validate(&self, layers: usize) -> Result<()> {
        if let Budget::Counts { fa, swa } = *self {
            if fa + swa > layers {
                bail!("budget fa={fa},swa={swa} asks for {} softmax layers but the teacher has {layers}", fa + swa);
            }
            if fa == layers {
                bail!("budget fa={fa} keeps every layer full attention: nothing to convert");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_cost_and_rejects_nonsense() {
        assert_eq!(
            Budget::parse("fa=2,swa=4").unwrap(),
            Budget::Counts { fa: 2, swa: 4 }
        );
        assert_eq!(
            Budget::parse("swa=3").unwrap(),
            Budget::Counts { fa: 0, swa: 3 }
        );
        assert_eq!(Budget::parse("cost=0.15").unwrap(), Budget::Cost(0.15));
        for bad in ["", "fa", "fa=x", "gdn=3", "cost=0", "cost=1.5", "cost=abc"] {
            let e = Budget::parse(bad).unwrap_err().to_string();
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(Budget::parse("fa=2,swa=4").unwrap().validate(30).is_ok());
        assert!(Budget::parse("fa=20,swa=20").unwrap().validate(30).is_err());
        assert!(Budget::parse("fa=30").unwrap().validate(30).is_err());
    }
}
