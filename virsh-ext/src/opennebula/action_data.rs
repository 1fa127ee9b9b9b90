//! The `DS_DRIVER_ACTION_DATA` document that OpenNebula's datastore driver
//! (`one_datastore`) hands every DS action on stdin: base64 of
//! `<DS_DRIVER_ACTION_DATA><IMAGE>…</IMAGE><DATASTORE>…</DATASTORE>…`, with
//! the element names of OpenNebula's `Image::to_xml` and
//! `Datastore::to_xml`. Only the fields the blobvirt actions use are read.

use anyhow::{anyhow, Context, Result};
use base64::Engine as _;

/// The fields of an action's input that the blobvirt driver reads; a
/// missing element is an empty string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionData {
    pub image_id: String,
    pub image_name: String,
    /// `IMAGE/PATH`: the file to register (cp, stat), or the source
    /// image's SOURCE (clone).
    pub path: String,
    /// `IMAGE/SOURCE`: the volume of a registered image.
    pub source: String,
    /// `IMAGE/FORMAT` (`save_as` for mkfs of a disk save-as).
    pub format: String,
    /// `IMAGE/FS`: file system of an empty datablock (mkfs).
    pub fs: String,
    /// `IMAGE/SIZE` in MB.
    pub size_mb: Option<u64>,
    /// `IMAGE/TARGET_SNAPSHOT`: the snapshot of snap_delete/revert/flatten.
    pub target_snapshot: Option<i64>,
    pub ds_id: String,
    pub ds_name: String,
    /// `DATASTORE/TEMPLATE/LIMIT_MB`: the most this datastore may hold.
    pub limit_mb: Option<u64>,
    /// `DATASTORE/TEMPLATE/STAGING_DIR`: where non-raw images are converted.
    pub staging_dir: String,
}

/// Decodes the base64 text OpenNebula writes on stdin and parses it.
pub fn decode(stdin: &str) -> Result<ActionData> {
    let b64: String = stdin.split_whitespace().collect();
    if b64.is_empty() {
        return Err(anyhow!("no DS_DRIVER_ACTION_DATA on stdin; OpenNebula's datastore driver passes it base64-encoded, run the action the way one_datastore does"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| anyhow!("stdin is not base64 ({e}); OpenNebula's datastore driver passes DS_DRIVER_ACTION_DATA base64-encoded"))?;
    let xml = String::from_utf8(raw)
        .map_err(|_| anyhow!("DS_DRIVER_ACTION_DATA on stdin is not UTF-8 text"))?;
    parse(&xml)
}

/// Parses the decoded XML.
pub fn parse(xml: &str) -> Result<ActionData> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| anyhow!("DS_DRIVER_ACTION_DATA on stdin is malformed XML ({e})"))?;
    let root = doc.root_element();
    if !root.has_tag_name("DS_DRIVER_ACTION_DATA") {
        return Err(anyhow!(
            "stdin holds <{}>, not <DS_DRIVER_ACTION_DATA>; run the action the way one_datastore does",
            root.tag_name().name()
        ));
    }
    let text = |path: &[&str]| -> String {
        let mut n = Some(root);
        for p in path {
            n = n.and_then(|x| x.children().find(|c| c.has_tag_name(*p)));
        }
        n.and_then(|x| x.text()).unwrap_or("").trim().to_string()
    };
    let num = |path: &[&str]| -> Result<Option<u64>> {
        let t = text(path);
        if t.is_empty() {
            return Ok(None);
        }
        t.parse()
            .map(Some)
            .with_context(|| format!("{} is {t:?}, not a whole number", path.join("/")))
    };
    let snap = text(&["IMAGE", "TARGET_SNAPSHOT"]);
    Ok(ActionData {
        image_id: text(&["IMAGE", "ID"]),
        image_name: text(&["IMAGE", "NAME"]),
        path: text(&["IMAGE", "PATH"]),
        source: text(&["IMAGE", "SOURCE"]),
        format: text(&["IMAGE", "FORMAT"]),
        fs: text(&["IMAGE", "FS"]),
        size_mb: num(&["IMAGE", "SIZE"])?,
        target_snapshot: match snap.as_str() {
            "" => None,
            s => Some(
                s.parse()
                    .map_err(|_| anyhow!("IMAGE/TARGET_SNAPSHOT is {s:?}, not a snapshot id"))?,
            ),
        },
        ds_id: text(&["DATASTORE", "ID"]),
        ds_name: text(&["DATASTORE", "NAME"]),
        limit_mb: num(&["DATASTORE", "TEMPLATE", "LIMIT_MB"])?,
        staging_dir: text(&["DATASTORE", "TEMPLATE", "STAGING_DIR"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<DS_DRIVER_ACTION_DATA><IMAGE><ID>7</ID><NAME>debian</NAME>\
        <PATH>/var/tmp/d.qcow2</PATH><SOURCE></SOURCE><FORMAT>qcow2</FORMAT><SIZE>64</SIZE>\
        <TARGET_SNAPSHOT>2</TARGET_SNAPSHOT></IMAGE><DATASTORE><ID>100</ID><NAME>bv</NAME>\
        <TEMPLATE><LIMIT_MB>500</LIMIT_MB></TEMPLATE></DATASTORE></DS_DRIVER_ACTION_DATA>";

    #[test]
    fn reads_the_fields_of_a_base64_document() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(XML);
        let d = decode(&format!("{b64}\n")).unwrap();
        assert_eq!(d.image_id, "7");
        assert_eq!(d.path, "/var/tmp/d.qcow2");
        assert_eq!(d.size_mb, Some(64));
        assert_eq!(d.target_snapshot, Some(2));
        assert_eq!(d.ds_id, "100");
        assert_eq!(d.limit_mb, Some(500));
        assert_eq!(d.source, "");
    }

    #[test]
    fn bad_input_is_one_sentence() {
        assert!(decode("")
            .unwrap_err()
            .to_string()
            .contains("no DS_DRIVER_ACTION_DATA"));
        assert!(decode("%%%")
            .unwrap_err()
            .to_string()
            .contains("not base64"));
        let e = parse("<IMAGE/>").unwrap_err().to_string();
        assert!(e.contains("not <DS_DRIVER_ACTION_DATA>"), "{e}");
        let e =
            parse("<DS_DRIVER_ACTION_DATA><IMAGE><SIZE>x</SIZE></IMAGE></DS_DRIVER_ACTION_DATA>")
                .unwrap_err();
        assert!(format!("{e:#}").contains("IMAGE/SIZE"), "{e:#}");
    }
}
