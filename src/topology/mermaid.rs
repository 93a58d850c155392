//! The Mermaid renderer: [`Topology::to_mermaid`].

use super::render::{lines, Format};
use super::{Edge, Node, NodeKind, Topology};

impl Topology {
    /// Renders a Mermaid flowchart: one group per stage, inside it one group per arbiter; the
    /// source as a cylinder, the Scheduler as a hexagon, clients as stadiums; each node's
    /// counters on a second line. Paste it into a Markdown code block tagged `mermaid`, or into
    /// <https://mermaid.live>.
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
    ///         .on_current_arbiter()
    ///         .start(|_n: u32, _cx| async { Ok::<_, Infallible>(()) })
    ///         .unwrap();
    ///     let mermaid = poller.topology().to_mermaid();
    ///     let mut lines = mermaid.lines();
    ///     assert_eq!(lines.next(), Some("flowchart LR"));
    ///     assert_eq!(
    ///         lines.next(),
    ///         Some(r#"    subgraph poller_stage ["poller: 2 workers, 1 executor"]"#)
    ///     );
    ///     assert!(mermaid.contains(r#"poller_scheduler{{"Scheduler<br/>busy 0/2, "#));
    ///     assert!(mermaid.contains(r#"poller_fetcher -->|"Execute"| poller_executor0"#));
    ///     poller.shutdown(Duration::from_secs(1)).await.unwrap();
    /// }
    /// ```
    pub fn to_mermaid(&self) -> String {
        self.render(&Mermaid)
    }
}

/// Mermaid flowchart syntax.
struct Mermaid;

impl Format for Mermaid {
    const HEADER: &'static str = "flowchart LR\n";
    const FOOTER: &'static str = "";
    const CLOSE: &'static str = "end";

    fn node(&self, node: &Node) -> String {
        let (label, counters) = lines(node);
        let mut text = mermaid_escape(&label);
        if !counters.is_empty() {
            text.push_str("<br/>");
            text.push_str(&mermaid_escape(&counters));
        }
        let (open, close) = match node.kind {
            NodeKind::Client => ("([", "])"),
            NodeKind::Source => ("[(", ")]"),
            NodeKind::Scheduler => ("{{", "}}"),
            NodeKind::Fetcher | NodeKind::Executor => ("[", "]"),
        };
        format!("{}{open}\"{text}\"{close}", node.id)
    }

    fn open(&self, prefix: &str, key: Option<&str>, title: &str, indent: &str) -> String {
        let id = match key {
            None => format!("{prefix}_stage"),
            Some(key) => format!("{prefix}_{key}"),
        };
        format!("{indent}subgraph {id} [\"{}\"]\n", mermaid_escape(title))
    }

    fn edge(&self, e: &Edge) -> String {
        format!("{} -->|\"{}\"| {}", e.from, mermaid_escape(&e.label), e.to)
    }
}

/// Mermaid entity codes for what would end a quoted label or be read as HTML.
fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '\n' | '\r' => out.push(' '),
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
        assert_eq!(mermaid_escape("a \"b\" <c>"), "a #quot;b#quot; #lt;c#gt;");
    }
}
