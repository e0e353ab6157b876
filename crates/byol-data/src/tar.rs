//! Just enough of the tar format for WebDataset shards: a reader that lists the regular files of
//! an archive (name, data offset, size) from its headers alone, and a writer of plain ustar
//! archives. The reader understands what Python's `tarfile` and GNU tar write: ustar names with
//! a prefix, PAX extended headers (`path`, `size`), GNU long names, base-256 sizes.

use std::io::{BufReader, Read, Seek, Write};

const BLOCK: u64 = 512;

/// A regular file in an archive: its name and where its bytes lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Offset of the file's first byte from the start of the archive.
    pub offset: u64,
    pub size: u64,
}

/// Walks the headers of a tar archive, seeking over the file contents. Headers are read through a
/// small buffer, so a listing reads about one block per member rather than the whole archive.
pub struct TarReader<R: Read + Seek> {
    reader: BufReader<R>,
    /// Offset of the next header.
    position: u64,
    /// Bytes in the archive, to tell a truncated archive from a complete one.
    length: u64,
    done: bool,
    /// The names of the links passed over (hard and symbolic): members without data of their
    /// own, which a `tar` of a folder of linked images holds instead of the images.
    pub links: Vec<String>,
}

impl<R: Read + Seek> TarReader<R> {
    pub fn new(inner: R, length: u64) -> Self {
        Self {
            reader: BufReader::with_capacity(8 << 10, inner),
            position: 0,
            length,
            done: false,
            links: Vec::new(),
        }
    }

    /// The contents of `member` (which this reader has just listed: the reader is positioned
    /// at its data, or before it).
    pub fn read_member(&mut self, member: &Member) -> Result<Vec<u8>, String> {
        let here = self.reader.stream_position().map_err(|e| e.to_string())?;
        self.reader
            .seek_relative(member.offset as i64 - here as i64)
            .map_err(|e| e.to_string())?;
        let mut data = vec![0u8; member.size as usize];
        self.reader
            .read_exact(&mut data)
            .map_err(|e| format!("cannot read {} at byte {}: {e}", member.name, member.offset))?;
        Ok(data)
    }

    fn read_block(&mut self, at: u64) -> Result<[u8; BLOCK as usize], String> {
        let here = self.reader.stream_position().map_err(|e| e.to_string())?;
        self.reader
            .seek_relative(at as i64 - here as i64)
            .map_err(|e| e.to_string())?;
        let mut block = [0u8; BLOCK as usize];
        self.reader
            .read_exact(&mut block)
            .map_err(|e| format!("truncated at byte {at} (reading a header: {e})"))?;
        Ok(block)
    }

    fn read_data(&mut self, at: u64, size: u64) -> Result<Vec<u8>, String> {
        if size > 1 << 20 {
            return Err(format!("an extended header of {size} bytes at byte {at}"));
        }
        self.read_member(&Member {
            name: "an extended header".into(),
            offset: at,
            size,
        })
    }

    /// The zero block at `at` must be the first of the two that end the archive, and everything
    /// after them zero (the padding to a 10 KiB record): a zero block followed by members means
    /// a zeroed stretch inside the file, whose members a reader that stopped there would lose.
    fn check_end(&mut self, at: u64) -> Result<(), String> {
        let second = at + BLOCK;
        if second + BLOCK > self.length {
            return Err(format!(
                "truncated at byte {second}: the file ends after one zero block at byte {at}, without the \
                 second zero block that ends a tar archive"
            ));
        }
        let mut rest = vec![0u8; 64 << 10];
        let mut from = second;
        while from < self.length {
            let n = rest.len().min((self.length - from) as usize);
            let here = self.reader.stream_position().map_err(|e| e.to_string())?;
            self.reader
                .seek_relative(from as i64 - here as i64)
                .map_err(|e| e.to_string())?;
            self.reader
                .read_exact(&mut rest[..n])
                .map_err(|e| format!("cannot read byte {from}: {e}"))?;
            if let Some(i) = rest[..n].iter().position(|&b| b != 0) {
                return Err(format!(
                    "damaged: a zero block at byte {at} ends the archive, yet byte {} after it is not zero (a \
                     zeroed stretch inside the file, or several archives joined one after another)",
                    from + i as u64
                ));
            }
            from += n as u64;
        }
        Ok(())
    }

    /// The header block at byte `at`; None at the archive's end marker (checked to be whole).
    fn header_at(&mut self, at: u64) -> Result<Option<[u8; BLOCK as usize]>, String> {
        // Every writer (GNU tar, Python's tarfile, `TarWriter`) ends an archive with two zero
        // blocks, so an archive that stops without them was cut short, possibly exactly between
        // two members, where nothing else shows the loss.
        if at == self.length {
            return Err(if at == 0 {
                "the file is empty (0 bytes; even an empty tar archive holds its 1024-byte end marker): \
                 it looks truncated"
                    .to_string()
            } else {
                format!(
                    "truncated at byte {at}: the file ends after a member, without the two zero blocks \
                     that end a tar archive"
                )
            });
        }
        if at > self.length {
            return Err(format!(
                "truncated at byte {}: the file ends inside the last member's padding (its next header \
                 would start at byte {at}), without the two zero blocks that end a tar archive",
                self.length
            ));
        }
        if at == 0 {
            let mut magic = [0u8; 6];
            let n = magic.len().min(self.length as usize);
            self.reader.rewind().map_err(|e| e.to_string())?;
            self.reader
                .read_exact(&mut magic[..n])
                .map_err(|e| format!("cannot read byte 0: {e}"))?;
            check_not_compressed(&magic[..n])?;
        }
        if at + BLOCK > self.length {
            return Err(format!(
                "truncated at byte {at}: {} bytes left for a 512-byte header",
                self.length - at
            ));
        }
        let header = self.read_block(at)?;
        if header.iter().all(|&b| b == 0) {
            self.check_end(at)?;
            return Ok(None);
        }
        Ok(Some(header))
    }

    /// The next regular file; `Ok(None)` at the end of the archive. The error names the byte
    /// offset where the archive stops making sense.
    pub fn next_member(&mut self) -> Result<Option<Member>, String> {
        let mut long_name: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        while !self.done {
            let at = self.position;
            let Some(header) = self.header_at(at)? else {
                self.done = true;
                return Ok(None);
            };
            check_checksum(&header).map_err(|e| format!("not a tar header at byte {at}: {e}"))?;
            let size = match pax_size.take() {
                Some(size) => size,
                None => parse_size(&header[124..136]).map_err(|e| format!("header at byte {at}: {e}"))?,
            };
            let data = at + BLOCK;
            let next = data + size.div_ceil(BLOCK) * BLOCK;
            if data + size > self.length {
                return Err(format!(
                    "truncated: the member at byte {at} claims {size} bytes, the file ends at byte {}",
                    self.length
                ));
            }
            self.position = next;
            match header[156] {
                b'0' | 0 | b'7' => {
                    let name = match long_name.take() {
                        Some(name) => name,
                        None => header_name(&header),
                    };
                    return Ok(Some(Member {
                        name,
                        offset: data,
                        size,
                    }));
                }
                // GNU long name: the data is the next member's name.
                b'L' => {
                    let raw = self.read_data(data, size)?;
                    long_name = Some(c_string(&raw));
                }
                // PAX extended header for the next member.
                b'x' => {
                    let raw = self.read_data(data, size)?;
                    for (key, value) in parse_pax(&raw).map_err(|e| format!("PAX header at byte {at}: {e}"))? {
                        match key.as_str() {
                            "path" => long_name = Some(value),
                            "size" => {
                                pax_size = Some(value.parse().map_err(|_| {
                                    format!("PAX header at byte {at}: size = {value:?} is not a number")
                                })?)
                            }
                            _ => {}
                        }
                    }
                }
                // GNU's long link name and global PAX headers leave a pending name for the entry
                // it belongs to.
                b'K' | b'g' => {}
                b'1' | b'2' => {
                    self.links
                        .push(long_name.take().unwrap_or_else(|| header_name(&header)));
                }
                // Folders and the rest carry no sample data; a long name given for one of them
                // is its own, not the next file's.
                _ => long_name = None,
            }
        }
        Ok(None)
    }
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn header_name(header: &[u8; 512]) -> String {
    let name = c_string(&header[0..100]);
    let ustar = &header[257..263] == b"ustar\0";
    let prefix = if ustar {
        c_string(&header[345..500])
    } else {
        String::new()
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// How the error about a compressed archive ends.
pub(crate) const COMPRESSED_HINT: &str = "or write the shards with byol-run shard";

/// A compressed archive is intact but not a tar file: said so, rather than "damaged".
fn check_not_compressed(first_block: &[u8]) -> Result<(), String> {
    const COMPRESSED: [(&[u8], &str, &str); 5] = [
        (&[0x1f, 0x8b], "gzip", "gunzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd", "unzstd"),
        (b"BZh", "bzip2", "bunzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz", "unxz"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4", "lz4 -d"),
    ];
    match COMPRESSED.iter().find(|(magic, _, _)| first_block.starts_with(magic)) {
        Some((_, format, tool)) => Err(format!(
            "a {format}-compressed file, not a tar archive: shards are read uncompressed (as they are \
             read at any byte); decompress it ({tool}) {COMPRESSED_HINT}"
        )),
        None => Ok(()),
    }
}

fn check_checksum(header: &[u8; 512]) -> Result<(), String> {
    let stored = parse_octal(&header[148..156]).ok_or("unreadable checksum field")?;
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| if (148..156).contains(&i) { b' ' as u64 } else { b as u64 })
        .sum();
    if sum != stored {
        return Err(format!("checksum {stored} stored, {sum} computed"));
    }
    Ok(())
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Octal, or GNU's base-256 for sizes of 8 GiB and more.
fn parse_size(field: &[u8]) -> Result<u64, String> {
    if field[0] & 0x80 != 0 {
        let mut value = 0u64;
        for &b in &field[1..] {
            value = value.checked_mul(256).ok_or("size too large")? + b as u64;
        }
        return Ok(value);
    }
    parse_octal(field).ok_or_else(|| format!("size field {:?} is not octal", String::from_utf8_lossy(field)))
}

/// PAX records: `"<length> <key>=<value>\n"`.
fn parse_pax(mut raw: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut records = Vec::new();
    while !raw.is_empty() && raw[0] != 0 {
        let space = raw.iter().position(|&b| b == b' ').ok_or("record without a length")?;
        let length: usize = std::str::from_utf8(&raw[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("record length is not a number")?;
        if length <= space + 1 || length > raw.len() {
            return Err(format!("record length {length} out of range"));
        }
        let record = &raw[space + 1..length];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let equals = record.iter().position(|&b| b == b'=').ok_or("record without '='")?;
        records.push((
            String::from_utf8_lossy(&record[..equals]).into_owned(),
            String::from_utf8_lossy(&record[equals + 1..]).into_owned(),
        ));
        raw = &raw[length..];
    }
    Ok(records)
}

/// Writes a ustar archive: regular files only, mode 0644, mtime 0 (so that the same input gives
/// the same bytes). Names up to 100 bytes (WebDataset keys are short).
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    pub fn append(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        if name.len() > 100 || name.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("tar member name {name:?} must be 1 to 100 bytes"),
            ));
        }
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        let pad = (BLOCK as usize - data.len() % BLOCK as usize) % BLOCK as usize;
        self.out.write_all(&[0u8; 512][..pad])
    }

    /// Writes the two zero blocks that end an archive and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn list(bytes: &[u8]) -> Result<Vec<(Member, Vec<u8>)>, String> {
        let mut reader = TarReader::new(Cursor::new(bytes.to_vec()), bytes.len() as u64);
        let mut out = Vec::new();
        while let Some(m) = reader.next_member()? {
            let data = reader.read_member(&m)?;
            out.push((m, data));
        }
        Ok(out)
    }

    #[test]
    fn round_trip() {
        let mut writer = TarWriter::new(Vec::new());
        writer.append("000000.jpg", &[1, 2, 3]).unwrap();
        writer.append("000000.cls", b"7").unwrap();
        writer.append("000001.png", &vec![9u8; 1000]).unwrap();
        let bytes = writer.finish().unwrap();
        let members = list(&bytes).unwrap();
        let names: Vec<&str> = members.iter().map(|(m, _)| m.name.as_str()).collect();
        assert_eq!(names, ["000000.jpg", "000000.cls", "000001.png"]);
        assert_eq!(members[0].1, [1, 2, 3]);
        assert_eq!(members[1].1, b"7");
        assert_eq!(members[2].1, vec![9u8; 1000]);
        assert_eq!(members[0].0.offset, 512);
    }

    #[test]
    fn damaged_and_truncated_archives_are_errors() {
        let mut writer = TarWriter::new(Vec::new());
        writer.append("a.jpg", &[0u8; 700]).unwrap();
        let bytes = writer.finish().unwrap();
        let mut damaged = bytes.clone();
        damaged[3] ^= 0xFF;
        assert!(list(&damaged).unwrap_err().contains("checksum"));
        let truncated = &bytes[..900];
        assert!(
            list(truncated).unwrap_err().contains("truncated"),
            "{:?}",
            list(truncated)
        );
    }

    #[test]
    fn an_archive_must_end_with_its_two_zero_blocks() {
        let mut writer = TarWriter::new(Vec::new());
        writer.append("a.jpg", &[7u8; 700]).unwrap();
        writer.append("a.cls", b"1").unwrap();
        let bytes = writer.finish().unwrap();
        assert_eq!(list(&bytes).unwrap().len(), 2);
        // Cut exactly after a member: every header read so far was whole.
        let err = list(&bytes[..1536]).unwrap_err();
        assert!(
            err.contains("truncated at byte 1536") && err.contains("zero blocks"),
            "{err}"
        );
        let err = list(&bytes[..2560]).unwrap_err();
        assert!(err.contains("truncated at byte 2560"), "{err}");
        // Cut inside a member's padding: its data is whole, its next header past the end.
        let err = list(&bytes[..1300]).unwrap_err();
        assert!(
            err.contains("truncated at byte 1300: the file ends inside the last member's padding"),
            "{err}"
        );
        // One zero block of the two.
        let err = list(&bytes[..3072]).unwrap_err();
        assert!(
            err.contains("truncated at byte 3072") && err.contains("second zero block"),
            "{err}"
        );
        let err = list(&[]).unwrap_err();
        assert!(err.contains("empty (0 bytes"), "{err}");
        // A zeroed member header in the middle hides the members after it.
        let mut zeroed = bytes.clone();
        zeroed[1536..2048].fill(0);
        let err = list(&zeroed).unwrap_err();
        assert!(err.contains("damaged") && err.contains("byte 1536"), "{err}");
        // Padding after the end marker (tarfile and GNU tar fill a 10 KiB record) is fine.
        let mut padded = bytes.clone();
        padded.resize(10240, 0);
        assert_eq!(list(&padded).unwrap().len(), 2);
    }

    #[test]
    fn pax_path_and_size_apply_to_the_next_member() {
        let mut writer = TarWriter::new(Vec::new());
        let record = "27 path=some/long/name.jpg\n";
        writer.append("PaxHeader", record.as_bytes()).unwrap();
        writer.append("short.jpg", &[5, 6]).unwrap();
        let mut bytes = writer.finish().unwrap();
        set_type(&mut bytes, 0, b'x'); // the first member is a PAX header
        let members = list(&bytes).unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].0.name, "some/long/name.jpg");
        assert_eq!(members[0].1, [5, 6]);
    }

    /// Sets the type flag of the header at `at` and fixes its checksum.
    fn set_type(bytes: &mut [u8], at: usize, flag: u8) {
        let header = &mut bytes[at..at + 512];
        header[156] = flag;
        header[148..156].fill(b' ');
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// GNU tar gives a folder with a long name an 'L' header too; the file after the folder
    /// keeps its own name.
    #[test]
    fn a_long_name_for_a_folder_is_not_the_next_files() {
        let folder = format!("{}/", "d".repeat(120));
        for (flag, data) in [
            (b'L', format!("{folder}\0")),
            (b'x', format!("{} path={folder}\n", folder.len() + 10)),
        ] {
            let mut writer = TarWriter::new(Vec::new());
            writer.append("././@LongLink", data.as_bytes()).unwrap();
            writer.append("dddd/", &[]).unwrap();
            writer.append("000000.cls", b"1").unwrap();
            let mut bytes = writer.finish().unwrap();
            set_type(&mut bytes, 0, flag);
            set_type(&mut bytes, 1024, b'5');
            let members = list(&bytes).unwrap();
            assert_eq!(members.len(), 1, "{}", flag as char);
            assert_eq!(members[0].0.name, "000000.cls", "{}", flag as char);
        }
    }
}
