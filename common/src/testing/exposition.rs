//! A strict reader of the Prometheus text exposition format (version 0.0.4), so tests
//! can assert on scraped numbers, and the naming rules every metric must follow.
//!
//! It reads what a Prometheus server reads: `# HELP` and `# TYPE` lines and samples
//! `name{label="value",…} value`, with `\\`, `\"` and `\n` escapes in label values.
//! Anything else is an error naming the line, so a malformed scrape fails the test.

use std::collections::{BTreeMap, HashMap};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether the sample has every one of `labels`.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(name, value)| self.labels.get(*name).map(String::as_str) == Some(*value))
    }
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Each family's declared type (`counter`, `gauge`, `histogram`, `summary`, `untyped`).
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Parses a scrape.
    ///
    /// # Errors
    /// The first line that is not valid text format, with its number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut exposition = Self::default();
        for (number, line) in text.lines().enumerate() {
            let fail = |why: &str| format!("line {}: {why}: {line:?}", number + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(fail("unknown metric type"));
                        }
                        if exposition
                            .types
                            .insert(name.to_owned(), kind.to_owned())
                            .is_some()
                        {
                            return Err(fail("a second TYPE line for one family"));
                        }
                    }
                    (Some("TYPE"), _, _) => return Err(fail("TYPE needs a name and a type")),
                    (Some("HELP"), Some(_), _) => {}
                    _ => {}
                }
                continue;
            }
            exposition
                .samples
                .push(parse_sample(line).map_err(|why| fail(&why))?);
        }
        Ok(exposition)
    }

    /// The samples named `name` that have every one of `labels`.
    pub fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |sample| sample.name == name && sample.has(labels))
    }

    /// The sum of the samples named `name` that have every one of `labels`; 0 when there
    /// are none (a counter never incremented may not be shown).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels).map(|sample| sample.value).sum()
    }

    /// The value of the one sample named `name` with exactly `labels`, if shown.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(name, labels)
            .find(|sample| sample.labels.len() == labels.len())
            .map(|sample| sample.value)
    }

    /// Every way the scrape breaks Prometheus's naming rules and conventions
    /// (<https://prometheus.io/docs/practices/naming/>): valid metric and label names, a
    /// declared type per family, `_total` on counters and only on counters, base units
    /// (`_seconds`, never `_milliseconds`), and histogram series with their `le`.
    pub fn naming_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (family, kind) in &self.types {
            if !is_metric_name(family) {
                problems.push(format!("{family}: not a valid metric name"));
            }
            if (kind == "counter") != family.ends_with("_total") {
                problems.push(format!(
                    "{family}: a {kind} must end in _total only if it is a counter"
                ));
            }
            for unit in [
                "_milliseconds",
                "_ms",
                "_minutes",
                "_hours",
                "_bytes_kb",
                "_percent",
            ] {
                if family.contains(unit) {
                    problems.push(format!("{family}: not in base units ({unit})"));
                }
            }
        }
        for sample in &self.samples {
            let Some((family, kind)) = self.family_of(&sample.name) else {
                problems.push(format!("{}: no TYPE line declares its family", sample.name));
                continue;
            };
            for label in sample.labels.keys() {
                if !is_label_name(label) || label.starts_with("__") {
                    problems.push(format!(
                        "{}: label {label:?} is not a valid name",
                        sample.name
                    ));
                }
            }
            if kind == "histogram"
                && sample.name == format!("{family}_bucket")
                && !sample.labels.contains_key("le")
            {
                problems.push(format!("{}: a bucket without le", sample.name));
            }
        }
        problems
    }

    /// The family a sample belongs to and its type: its own name, or for `_bucket`,
    /// `_sum` and `_count` series, the histogram or summary they belong to.
    fn family_of<'a>(&'a self, name: &'a str) -> Option<(&'a str, &'a str)> {
        if let Some(kind) = self.types.get(name) {
            return Some((name, kind));
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let family = name.strip_suffix(suffix)?;
            let kind = self.types.get(family)?;
            matches!(kind.as_str(), "histogram" | "summary").then_some((family, kind.as_str()))
        })
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err(format!("{name:?} is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("a label without '='")?;
            let label = rest[..eq].trim();
            if !is_label_name(label) {
                return Err(format!("{label:?} is not a label name"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("a label value must be quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((at, '"')) => break at,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("a bad escape in a label value".to_owned()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".to_owned()),
                }
            };
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label:?} twice"));
            }
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("a sample needs a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("{timestamp:?} is not a timestamp"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".to_owned());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::Exposition;

    #[test]
    fn a_scrape_is_read_into_samples_with_their_labels() {
        let text = "# HELP verify_checks_total Code checks.\n\
                    # TYPE verify_checks_total counter\n\
                    verify_checks_total{outcome=\"approved\",note=\"a \\\"b\\\" \\\\ c\"} 3\n\
                    # TYPE verify_x_seconds histogram\n\
                    verify_x_seconds_bucket{le=\"0.1\"} 1\n\
                    verify_x_seconds_bucket{le=\"+Inf\"} 2\n\
                    verify_x_seconds_sum 0.3\n\
                    verify_x_seconds_count 2 1700000000000\n";
        let scrape = Exposition::parse(text).unwrap();
        assert_eq!(
            scrape.value(
                "verify_checks_total",
                &[("outcome", "approved"), ("note", "a \"b\" \\ c")]
            ),
            Some(3.0)
        );
        assert_eq!(
            scrape.value("verify_x_seconds_bucket", &[("le", "+Inf")]),
            Some(2.0)
        );
        assert_eq!(scrape.value("verify_x_seconds_count", &[]), Some(2.0));
        assert!(
            scrape.naming_problems().is_empty(),
            "{:?}",
            scrape.naming_problems()
        );
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for text in [
            "verify_a_total",
            "verify_a_total{x=\"1\" 2",
            "verify_a_total{x=1} 2",
            "verify_a_total{x=\"1\",x=\"2\"} 2",
            "verify-a 1",
            "verify_a_total two",
            "# TYPE verify_a_total countr",
        ] {
            let error = Exposition::parse(text).expect_err(text);
            assert!(error.starts_with("line 1"), "{text}: {error}");
        }
    }

    #[test]
    fn names_against_the_conventions_are_reported() {
        let text = "# TYPE verify_sent counter\nverify_sent 1\n\
                    # TYPE verify_latency_ms gauge\nverify_latency_ms 1\n\
                    verify_undeclared 1\n";
        let problems = Exposition::parse(text).unwrap().naming_problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
