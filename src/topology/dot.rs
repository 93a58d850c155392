//! The Graphviz DOT renderer: [`Topology::to_dot`].

use super::render::{lines, Format};
use super::{Edge, Node, NodeKind, Topology};

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
        self.render(&Dot)
    }
}

/// Graphviz DOT syntax.
struct Dot;

impl Format for Dot {
    const HEADER: &'static str = "digraph topology {\n    rankdir=LR;\n    \
        node [shape=box, fontname=\"Helvetica\"];\n    \
        edge [fontname=\"Helvetica\", fontsize=10];\n";
    const FOOTER: &'static str = "}\n";
    const CLOSE: &'static str = "}";

    fn node(&self, node: &Node) -> String {
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

    fn open(&self, prefix: &str, key: Option<&str>, title: &str, indent: &str) -> String {
        let id = match key {
            None => format!("cluster_{prefix}"),
            Some(key) => format!("cluster_{prefix}_{key}"),
        };
        format!(
            "{indent}subgraph \"{id}\" {{\n{indent}    label=\"{}\";\n",
            dot_escape(title)
        )
    }

    fn edge(&self, e: &Edge) -> String {
        format!(
            "\"{}\" -> \"{}\" [label=\"{}\"];",
            e.from,
            e.to,
            dot_escape(&e.label)
        )
    }
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
