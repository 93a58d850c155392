//! The Graphviz DOT renderer: [`Topology::to_dot`].

use std::fmt::Write as _;

use super::{lines, Node, NodeKind, Topology};

impl Topology {
    /// Renders a Graphviz DOT digraph: one cluster per stage, inside it one cluster per
    /// arbiter; each node's counters on a second line. Render with `dot -Tsvg`.
    ///
    /// # Examples
    ///
    /// ```
    /// use actix_poller::Poller;
    /// use std::{convert::Infallible, time::Duration};
    ///
    /// #[actix_rt::main]
    /// async fn main() {
    ///     let poller = Poller::<u32>::builder()
    ///         .workers(2)
    ///         .executors(2)
    ///         .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
    ///         .unwrap();
    ///     let dot = poller.topology().to_dot();
    ///     assert!(dot.starts_with("digraph topology {"));
    ///     assert!(dot.contains(r#"subgraph "cluster_poller_arbiter2" {"#));
    ///     assert!(dot.contains(r#""poller_executor1" -> "poller_scheduler" [label="Done"];"#));
    ///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn to_dot(&self) -> String {
        let mut out = String::from("digraph topology {\n");
        out.push_str("    rankdir=LR;\n");
        out.push_str("    node [shape=box, fontname=\"Helvetica\"];\n");
        out.push_str("    edge [fontname=\"Helvetica\", fontsize=10];\n");
        for node in self.nodes.iter().filter(|n| n.stage.is_none()) {
            let _ = writeln!(out, "    {}", dot_node(node));
        }
        for stage in &self.stages {
            let _ = writeln!(out, "    subgraph \"cluster_{}\" {{", stage.prefix);
            let _ = writeln!(out, "        label=\"{}\";", dot_escape(&stage.title()));
            for group in self.groups(stage) {
                let indent = if group.title.is_some() { "    " } else { "" };
                if let Some(title) = &group.title {
                    let _ = writeln!(
                        out,
                        "        subgraph \"cluster_{}_{}\" {{",
                        stage.prefix, group.key
                    );
                    let _ = writeln!(out, "            label=\"{}\";", dot_escape(title));
                }
                for node in group.nodes {
                    let _ = writeln!(out, "        {indent}{}", dot_node(node));
                }
                if group.title.is_some() {
                    let _ = writeln!(out, "        }}");
                }
            }
            let _ = writeln!(out, "    }}");
        }
        for e in &self.edges {
            let _ = writeln!(
                out,
                "    \"{}\" -> \"{}\" [label=\"{}\"];",
                e.from,
                e.to,
                dot_escape(&e.label)
            );
        }
        out.push_str("}\n");
        out
    }
}

fn dot_node(node: &Node) -> String {
    let (label, counters) = lines(node);
    let mut text = dot_escape(&label);
    if !counters.is_empty() {
        text.push_str("\\n");
        text.push_str(&dot_escape(&counters));
    }
    let shape = match node.kind {
        NodeKind::Client => "oval",
        NodeKind::Source => "cylinder",
        NodeKind::Scheduler => "hexagon",
        NodeKind::Fetcher | NodeKind::Executor => "box",
    };
    format!("\"{}\" [label=\"{text}\", shape={shape}];", node.id)
}

fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_keep_labels_inside_their_quotes() {
        assert_eq!(dot_escape("a \"b\" \\"), "a \\\"b\\\" \\\\");
    }
}
