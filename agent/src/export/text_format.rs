//! The classic Prometheus text format (0.0.4) from prometheus-client's OpenMetrics output,
//! for clients that do not ask for OpenMetrics (curl, promtool, older scrapers): counters'
//! HELP/TYPE lines name the `_total` series, and there are no `# UNIT` or `# EOF` lines.

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn from_openmetrics(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<&str> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            if let Some(h) = pending_help.replace(line) {
                push_line(&mut out, h);
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.rsplit_once(' ').unwrap_or((rest, ""));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(help) = pending_help.take() {
                let text = help["# HELP ".len()..]
                    .split_once(' ')
                    .map_or("", |(_, t)| t);
                push_line(&mut out, &format!("# HELP {name} {text}"));
            }
            push_line(&mut out, &format!("# TYPE {name} {kind}"));
            continue;
        }
        if let Some(h) = pending_help.take() {
            push_line(&mut out, h);
        }
        push_line(&mut out, line);
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_names() {
        let om = "# HELP a_events Events.\n# TYPE a_events counter\na_events_total 3\n\
                  # HELP d Duration.\n# TYPE d histogram\n# UNIT d seconds\nd_count 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(om),
            "# HELP a_events_total Events.\n# TYPE a_events_total counter\na_events_total 3\n\
             # HELP d Duration.\n# TYPE d histogram\nd_count 1\n"
        );
    }

    #[test]
    fn garbage_in_is_passed_through() {
        assert_eq!(from_openmetrics("# HELP\n# TYPE\nx"), "# HELP\n# TYPE\nx\n");
        assert_eq!(from_openmetrics(""), "");
    }
}
