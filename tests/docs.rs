//! The operator docs stay true to the code: every `m365_ingest_…` metric named in
//! `docs/alerts.yml`, `docs/grafana-dashboard.json` and `docs/runbook.md` is one `src/metrics.rs`
//! defines, every alert has a severity, a summary and a runbook link whose anchor is a heading of
//! `docs/runbook.md`, and the dashboard is JSON Grafana can import.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The metric names of `src/metrics.rs` (`pub const NAME: &str = "m365_ingest_…";`), each with
/// whether it is described as a histogram.
fn defined_metrics() -> BTreeMap<String, bool> {
    let src = read("src/metrics.rs");
    let mut consts = BTreeMap::new();
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else {
            continue;
        };
        let Some((ident, value)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let Some(name) = value.strip_suffix("\";") else {
            continue;
        };
        if name.starts_with("m365_ingest_") {
            consts.insert(ident.trim().to_string(), name.to_string());
        }
    }
    assert!(
        consts.len() >= 10,
        "too few metrics found in src/metrics.rs: {consts:?}"
    );
    let histograms: BTreeSet<String> = src
        .split("describe_histogram!(")
        .skip(1)
        .filter_map(|after| {
            let ident: String = after
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            consts.get(&ident).cloned()
        })
        .collect();
    assert!(
        !histograms.is_empty(),
        "no histogram found in src/metrics.rs"
    );
    consts
        .into_values()
        .map(|name| {
            let h = histograms.contains(&name);
            (name, h)
        })
        .collect()
}

/// Every `m365_ingest_[a-z_]+` in `text` (a trailing `_` is not part of the name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("m365_ingest_") {
        let preceded_by_word = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[i + "m365_ingest_".len()..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = format!("m365_ingest_{}", &tail[..len]);
        if !preceded_by_word {
            found.insert(name.trim_end_matches('_').to_string());
        }
        rest = &tail[len..];
    }
    found
}

fn is_defined(name: &str, defined: &BTreeMap<String, bool>) -> bool {
    if defined.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| defined.get(base) == Some(&true))
    })
}

/// GitHub's heading anchor: lowercase, punctuation dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn runbook_anchors() -> BTreeSet<String> {
    let mut in_code = false;
    read("docs/runbook.md")
        .lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_code = !in_code;
            }
            !in_code
        })
        .filter_map(|l| {
            let hashes = l.chars().take_while(|c| *c == '#').count();
            (hashes > 0 && l[hashes..].starts_with(' ')).then(|| anchor(&l[hashes..]))
        })
        .collect()
}

#[test]
fn docs_name_only_metrics_the_daemon_exports() {
    let defined = defined_metrics();
    for doc in [
        "docs/alerts.yml",
        "docs/grafana-dashboard.json",
        "docs/runbook.md",
    ] {
        let names = metric_names(&read(doc));
        assert!(!names.is_empty(), "{doc} names no metric");
        let unknown: Vec<_> = names.iter().filter(|n| !is_defined(n, &defined)).collect();
        assert!(
            unknown.is_empty(),
            "{doc} names metrics src/metrics.rs does not define: {unknown:?} (defined: {:?})",
            defined.keys().collect::<Vec<_>>()
        );
    }
}

#[test]
fn every_alert_has_severity_summary_and_a_runbook_section() {
    let text = read("docs/alerts.yml");
    assert!(!text.contains('\t'), "YAML does not allow tabs");
    assert!(
        text.lines()
            .any(|l| l.starts_with("groups:") && l.trim_end() == "groups:"),
        "docs/alerts.yml is not a Prometheus rule file (no top-level `groups:`)"
    );
    let anchors = runbook_anchors();
    let rules: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert!(
        rules.len() >= 10,
        "expected the documented alerts, found {}",
        rules.len()
    );
    let mut names = BTreeSet::new();
    for rule in rules {
        let name = rule.lines().next().unwrap().trim();
        assert!(
            names.insert(name.to_string()),
            "alert {name} is defined twice"
        );
        let value = |key: &str| {
            rule.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.trim().trim_matches('"').to_string())
        };
        assert!(value("expr:").is_some(), "{name}: no expr");
        let severity = value("severity:").unwrap_or_else(|| panic!("{name}: no severity label"));
        assert!(
            ["critical", "warning"].contains(&severity.as_str()),
            "{name}: severity {severity}"
        );
        let summary = value("summary:").unwrap_or_else(|| panic!("{name}: no summary"));
        assert!(!summary.is_empty(), "{name}: empty summary");
        let runbook = value("runbook:").unwrap_or_else(|| panic!("{name}: no runbook"));
        let (file, fragment) = runbook
            .split_once('#')
            .unwrap_or_else(|| panic!("{name}: runbook {runbook} has no #anchor"));
        assert_eq!(file, "docs/runbook.md", "{name}: runbook points elsewhere");
        assert!(
            anchors.contains(fragment),
            "{name}: no heading of docs/runbook.md has the anchor #{fragment} (anchors: {anchors:?})"
        );
    }
}

#[test]
fn runbook_links_within_itself_resolve() {
    let text = read("docs/runbook.md");
    let anchors = runbook_anchors();
    for link in text.split("](#").skip(1) {
        let fragment = &link[..link.find(')').expect("unclosed link")];
        assert!(
            anchors.contains(fragment),
            "docs/runbook.md links to #{fragment}, which is no heading"
        );
    }
}

#[test]
fn dashboard_is_grafana_json_with_the_tenant_variable() {
    let dash: serde_json::Value =
        serde_json::from_str(&read("docs/grafana-dashboard.json")).expect("valid JSON");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name);
    assert_eq!(var("datasource").unwrap()["type"], "datasource");
    let tenant = var("tenant").expect("a tenant variable");
    assert_eq!(
        tenant["definition"],
        "label_values(m365_ingest_polls_total, tenant)"
    );
    let panels: Vec<&serde_json::Value> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .collect();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "{title}: duplicate id"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("tenant=~\"$tenant\""),
                "{title}: {expr} ignores the tenant variable"
            );
        }
    }
    let all = read("docs/grafana-dashboard.json");
    assert!(all.contains("histogram_quantile(0.95"));
    assert!(all.contains("m365_ingest_delivery_duration_seconds_bucket"));
}

#[test]
fn readme_points_to_the_operator_docs() {
    let readme = read("README.md");
    let monitoring = readme
        .split("## Monitoring")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Monitoring section");
    for doc in [
        "docs/alerts.yml",
        "docs/grafana-dashboard.json",
        "docs/runbook.md",
    ] {
        assert!(
            monitoring.contains(doc),
            "README's Monitoring section does not mention {doc}"
        );
    }
}
