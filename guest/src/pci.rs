//! PCI paths as Kata's runtime names hot-plugged devices: the slot (and function) of each
//! bridge from the root bus down, then the device's, e.g. `02/03` or `02.0/03.1`, hex.

use std::path::{Path, PathBuf};

use crate::error::{invalid, GuestError, Result};

/// One step of a PCI path: slot 0..=0x1f and function 0..=7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFn {
    pub slot: u8,
    pub function: u8,
}

impl std::fmt::Display for SlotFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}.{:x}", self.slot, self.function)
    }
}

/// A device's place on the PCI buses below the root complex `0000:00`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciPath(Vec<SlotFn>);

/// Deeper than any real topology; keeps a hostile path from making long walks.
const MAX_DEPTH: usize = 8;

impl PciPath {
    /// Parses `SS[.F]/SS[.F]/...`; `field` names the request field in errors.
    pub fn parse(field: &str, text: &str) -> Result<PciPath> {
        let bad = |why: String| invalid(field, format!("{text:?} is not a PCI path ({why})"));
        if text.is_empty() {
            return Err(bad("empty".into()));
        }
        let mut steps = Vec::new();
        for part in text.split('/') {
            let (slot, func) = match part.split_once('.') {
                Some((s, f)) => (s, Some(f)),
                None => (part, None),
            };
            let slot = u8::from_str_radix(slot, 16)
                .ok()
                .filter(|s| *s <= 0x1f && !slot.is_empty() && slot.len() <= 2)
                .ok_or_else(|| bad(format!("slot {slot:?} is not 00..1f")))?;
            let function = match func {
                None => 0,
                Some(f) => u8::from_str_radix(f, 16)
                    .ok()
                    .filter(|n| *n <= 7 && f.len() == 1)
                    .ok_or_else(|| bad(format!("function {f:?} is not 0..7")))?,
            };
            steps.push(SlotFn { slot, function });
        }
        PciPath::new(field, steps)
    }

    /// From slot numbers alone (AddSwapRequest's `PCIPath`), function 0 each.
    pub fn from_slots(field: &str, slots: &[u32]) -> Result<PciPath> {
        let steps = slots
            .iter()
            .enumerate()
            .map(|(i, s)| {
                u8::try_from(*s)
                    .ok()
                    .filter(|s| *s <= 0x1f)
                    .map(|slot| SlotFn { slot, function: 0 })
                    .ok_or_else(|| {
                        invalid(
                            &format!("{field}[{i}]"),
                            format!("{s} is not a PCI slot (0-31)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        PciPath::new(field, steps)
    }

    fn new(field: &str, steps: Vec<SlotFn>) -> Result<PciPath> {
        if steps.is_empty() {
            return Err(invalid(field, "empty PCI path"));
        }
        if steps.len() > MAX_DEPTH {
            return Err(invalid(field, format!("deeper than {MAX_DEPTH} buses")));
        }
        Ok(PciPath(steps))
    }

    /// The device's directory relative to the root complex's (`/sys/devices/pci0000:00`):
    /// each bridge's secondary bus is read from its `pci_bus/` directory.
    pub fn sysfs_relative(&self, root_bus: &Path) -> Result<PathBuf> {
        let mut bus = "0000:00".to_string();
        let mut rel = PathBuf::new();
        for (i, step) in self.0.iter().enumerate() {
            rel.push(format!("{bus}:{step}"));
            if i + 1 == self.0.len() {
                break;
            }
            let bridge = root_bus.join(&rel).join("pci_bus");
            let mut children = std::fs::read_dir(&bridge)
                .map_err(|e| {
                    GuestError::NotFound(format!(
                        "PCI path {self}: bridge {} has no secondary bus ({}: {e})",
                        rel.display(),
                        bridge.display()
                    ))
                })?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned());
            bus = match (children.next(), children.next()) {
                (Some(b), None) => b,
                _ => {
                    return Err(GuestError::Internal(format!(
                        "PCI path {self}: bridge {} does not have exactly one secondary bus",
                        rel.display()
                    )))
                }
            };
        }
        Ok(rel)
    }
}

impl std::fmt::Display for PciPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|s| format!("{:02x}", s.slot)).collect();
        write!(f, "{}", parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_in_kata_s_format_and_bad_ones_name_the_field() {
        let p = PciPath::parse("source", "02/1f.3").unwrap();
        assert_eq!(
            p.0,
            vec![
                SlotFn {
                    slot: 2,
                    function: 0
                },
                SlotFn {
                    slot: 0x1f,
                    function: 3
                }
            ]
        );
        assert_eq!(p.to_string(), "02/1f");
        for bad in [
            "",
            "20",
            "02/",
            "x",
            "02.8",
            "002",
            "02/03/04/05/06/07/08/09/0a",
        ] {
            let e = PciPath::parse("source", bad).unwrap_err();
            assert!(e.to_string().starts_with("source:"), "{bad:?}: {e}");
        }
        assert_eq!(
            PciPath::from_slots("PCIPath", &[5]).unwrap().to_string(),
            "05"
        );
        let e = PciPath::from_slots("PCIPath", &[1, 32]).unwrap_err();
        assert!(e.to_string().starts_with("PCIPath[1]"), "{e}");
        assert!(PciPath::from_slots("PCIPath", &[]).is_err());
    }

    #[test]
    fn bridges_are_followed_through_their_secondary_bus() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("0000:00:02.0/pci_bus/0000:01")).unwrap();
        let p = PciPath::parse("source", "02/03").unwrap();
        assert_eq!(
            p.sysfs_relative(root.path()).unwrap(),
            PathBuf::from("0000:00:02.0/0000:01:03.0")
        );
        let p = PciPath::parse("source", "04/03").unwrap();
        assert!(matches!(
            p.sysfs_relative(root.path()),
            Err(GuestError::NotFound(_))
        ));
        let p = PciPath::parse("source", "05").unwrap();
        assert_eq!(
            p.sysfs_relative(root.path()).unwrap(),
            PathBuf::from("0000:00:05.0")
        );
    }
}
