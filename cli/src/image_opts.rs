//! What `image convert` and `image optimize` decide alike: the tag a
//! result gets and how layers are converted.

use ringstar_image::RootRef;
use ringstar_image::convert::{ConvertCache, ConvertOptions};

use crate::layer_cmd::WriterArgs;

/// The tag a result is stored under, as DST names it: "latest" when it
/// names none (a layout lists it in index.json under that); a DST by
/// digest is not tagged.
pub(crate) fn dst_tag(root: &RootRef) -> Option<String> {
    match root {
        RootRef::Tag(t) => Some(t.clone()),
        RootRef::Only => Some("latest".to_string()),
        RootRef::Digest(_) => None,
    }
}

/// How convert and optimize convert: the writer's options (prioritized
/// files may be missing from a layer), `jobs` layers at once, the user's
/// conversion cache unless `no_cache`.
pub(crate) fn convert_options(
    writer: &WriterArgs,
    jobs: usize,
    no_cache: bool,
) -> anyhow::Result<ConvertOptions> {
    Ok(ConvertOptions {
        writer: writer.options(true)?,
        jobs,
        cache: if no_cache { None } else { ConvertCache::user() },
    })
}
