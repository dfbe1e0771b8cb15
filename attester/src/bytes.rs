//! Bounds-checked little-endian field access for the binary parsers.
//!
//! The parsers read host- or network-supplied bytes, so every access goes through these
//! helpers: an out-of-range read is an error naming the structure, never a panic.

use crate::Error;

/// A view over a structure's bytes that reports out-of-range reads against its name.
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Fields { bytes, what }
    }

    pub(crate) fn slice(&self, offset: usize, len: usize) -> Result<&'a [u8], Error> {
        offset
            .checked_add(len)
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or_else(|| {
                Error::malformed(
                    self.what,
                    format!(
                        "{} bytes, too short for a {len}-byte field at offset {offset:#x}",
                        self.bytes.len()
                    ),
                )
            })
    }

    pub(crate) fn array<const N: usize>(&self, offset: usize) -> Result<[u8; N], Error> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.slice(offset, N)?);
        Ok(out)
    }

    pub(crate) fn u16(&self, offset: usize) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array(offset)?))
    }

    pub(crate) fn u32(&self, offset: usize) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array(offset)?))
    }

    pub(crate) fn u64(&self, offset: usize) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array(offset)?))
    }
}

/// Copies `report_data` (at most 64 bytes) into a zero-padded 64-byte block, as SNP and TDX
/// reports carry it.
pub(crate) fn pad_report_data(report_data: &[u8]) -> Result<[u8; 64], Error> {
    if report_data.len() > 64 {
        return Err(Error::ReportDataTooLong {
            len: report_data.len(),
        });
    }
    let mut block = [0u8; 64];
    block[..report_data.len()].copy_from_slice(report_data);
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_reads_are_errors_naming_the_structure() {
        let f = Fields::new(&[1, 2, 3], "test struct");
        assert_eq!(f.u16(1).unwrap(), 0x0302);
        let err = f.u32(0).unwrap_err().to_string();
        assert!(
            err.contains("test struct") && err.contains("3 bytes"),
            "{err}"
        );
        assert!(f.slice(usize::MAX, 2).is_err());
    }

    #[test]
    fn report_data_is_zero_padded_and_bounded() {
        let block = pad_report_data(&[7; 48]).unwrap();
        assert_eq!(&block[..48], &[7; 48]);
        assert_eq!(&block[48..], &[0; 16]);
        assert!(matches!(
            pad_report_data(&[0; 65]),
            Err(Error::ReportDataTooLong { len: 65 })
        ));
    }
}
