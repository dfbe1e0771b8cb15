//! Kernel command line parameters (`/proc/cmdline`).

use std::path::Path;

/// The parameters of a kernel command line, in order.
#[derive(Debug, Default)]
pub struct KernelCmdline {
    params: Vec<(String, Option<String>)>,
}

impl KernelCmdline {
    pub fn read(path: &Path) -> std::io::Result<KernelCmdline> {
        Ok(KernelCmdline::parse(&std::fs::read_to_string(path)?))
    }

    /// Splits like the kernel does: whitespace separates parameters except inside double
    /// quotes, and the quotes themselves are not part of the value.
    pub fn parse(text: &str) -> KernelCmdline {
        let mut params = Vec::new();
        let mut current = String::new();
        let mut in_quotes = false;
        let mut has_token = false;
        for c in text.chars() {
            match c {
                '"' => {
                    in_quotes = !in_quotes;
                    has_token = true;
                }
                c if c.is_whitespace() && !in_quotes => {
                    if has_token {
                        params.push(split_param(&current));
                        current.clear();
                        has_token = false;
                    }
                }
                c => {
                    current.push(c);
                    has_token = true;
                }
            }
        }
        if has_token {
            params.push(split_param(&current));
        }
        KernelCmdline { params }
    }

    /// The value of the last `key=value` for `key` (the kernel lets later ones win).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
}

fn split_param(token: &str) -> (String, Option<String>) {
    match token.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (token.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_parameter_among_others() {
        let c = KernelCmdline::parse(
            "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro agent.config_file=/etc/vigil.toml quiet\n",
        );
        assert_eq!(c.value("agent.config_file"), Some("/etc/vigil.toml"));
        assert_eq!(c.value("root"), Some("/dev/vda1"));
        assert_eq!(c.value("ro"), None);
        assert_eq!(c.value("agent.config"), None);
    }

    #[test]
    fn quoted_values_keep_spaces_and_lose_quotes() {
        let c = KernelCmdline::parse("a=1 agent.config_file=\"/run/my dir/v.toml\" b=\"x y\"");
        assert_eq!(c.value("agent.config_file"), Some("/run/my dir/v.toml"));
        assert_eq!(c.value("b"), Some("x y"));
        assert_eq!(c.value("a"), Some("1"));
    }

    #[test]
    fn later_parameter_wins_and_values_may_contain_equals() {
        let c = KernelCmdline::parse("k=1 k=2 opt=a=b");
        assert_eq!(c.value("k"), Some("2"));
        assert_eq!(c.value("opt"), Some("a=b"));
    }
}
