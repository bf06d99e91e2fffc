//! The Prometheus text exposition format (version 0.0.4), as the agent and the hub write it.
//!
//! Rendered on request from a few dozen numbers; no metric registry is kept between scrapes.

use std::fmt::Write;

/// An exposition being written: for each family its HELP and TYPE lines, then its samples.
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            out: String::with_capacity(bytes),
        }
    }

    /// Starts a family: `kind` is `counter`, `gauge`, ...
    pub fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Self {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        self
    }

    /// One sample of the current family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The text, every line newline-terminated, to serve as `text/plain; version=0.0.4`.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn samples_carry_labels_and_families_their_type() {
        let mut e = Exposition::with_capacity(0);
        e.family("x_total", "counter", "X.").sample(
            "x_total",
            &[("interface", "eth0"), ("q", "\"")],
            3.0,
        );
        assert_eq!(
            e.finish(),
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{interface=\"eth0\",q=\"\\\"\"} 3\n"
        );
    }
}
