//! Repetition summaries: median, min and max.

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(v: &[f64]) -> Summary {
    if v.is_empty() {
        return Summary::default();
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let median = if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    Summary {
        median,
        min: s[0],
        max: s[s.len() - 1],
        n: s.len(),
    }
}

impl Summary {
    /// "median (min-max)" with a formatter for the numbers.
    pub fn show(&self, f: impl Fn(f64) -> String) -> String {
        if self.n <= 1 {
            f(self.median)
        } else {
            format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
        }
    }
}
