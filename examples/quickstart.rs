//! The smallest complete use of `layout-core` (`cargo run --example quickstart`): catalog,
//! open, an API gated until finalized, one upgrade action, finalize, old release refused.

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;

use layout_core::{
    disallowed_until, ActionContext, ActionError, ActionRegistry, FileStorage, LayoutFeature,
    LayoutVersionManager, ManagerOptions, StartIntent, UpgradeFinalizer,
};

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The catalog: every change of the on-disk layout, numbered in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
enum NotesFeature {
    #[layout(version = 0, description = "One file per note")]
    Initial,
    #[layout(version = 1, description = "An index file listing every note")]
    NoteIndex,
}

/// The component: notes in a directory, its layout state in `VERSION` beside them.
struct Notes {
    dir: PathBuf,
    lvm: Arc<LayoutVersionManager<NotesFeature>>,
}

impl Notes {
    /// Starts the release whose software knows the layout up to `software`.
    fn start(dir: PathBuf, software: NotesFeature, intent: StartIntent) -> Result<Self> {
        let options = ManagerOptions::default()
            .with_software_layout_version(software.layout_version())
            .with_start_intent(intent);
        let lvm = Arc::new(LayoutVersionManager::open(FileStorage::new(&dir), options)?);
        let (mlv, slv) = (lvm.metadata_layout_version(), lvm.software_layout_version());
        let pre_finalized = lvm.needs_finalization();
        println!("   started: MLV {mlv}, SLV {slv}, pre-finalized: {pre_finalized}");
        Ok(Self { dir, lvm })
    }

    /// Writes a note; the index is written only once its feature is finalized.
    fn add(&self, name: &str, text: &str) -> Result<()> {
        fs::write(self.dir.join(format!("{name}.note")), text)?;
        if self.lvm.is_allowed(NotesFeature::NoteIndex) {
            let index = fs::read_to_string(self.dir.join("index"))?;
            fs::write(self.dir.join("index"), format!("{index}{name}\n"))?;
        }
        Ok(())
    }

    /// The new API: refused (`NotFinalized`) until `NoteIndex` is finalized.
    #[disallowed_until(NotesFeature::NoteIndex, manager = self.lvm)]
    fn list(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir.join("index"))?.replace('\n', " "))
    }
}

/// The upgrade action of `NoteIndex`: builds the index from the notes on disk.
fn build_index(notes: &Notes, _: &ActionContext<'_, NotesFeature>) -> Result<(), ActionError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(&notes.dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        names.extend(name.strip_suffix(".note").map(|n| format!("{n}\n")));
    }
    names.sort();
    Ok(fs::write(notes.dir.join("index"), names.concat())?)
}

fn main() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    println!("1. the old release installs the component and writes a note");
    let old = Notes::start(dir.into(), NotesFeature::Initial, StartIntent::Init)?;
    old.add("apples", "buy apples")?;
    drop(old);

    println!("2. the new release starts on the old layout, pre-finalized");
    let new = Notes::start(dir.into(), NotesFeature::NoteIndex, StartIntent::Upgrade)?;
    println!("   list refused: {}", new.list().expect_err("gated"));
    new.add("cheese", "grate cheese")?;

    println!("3. the operator finalizes: the NoteIndex action runs, then VERSION is stored");
    let actions = ActionRegistry::builder()
        .on_finalize(NotesFeature::NoteIndex, build_index)
        .build()?;
    let finalizer = UpgradeFinalizer::new(Arc::clone(&new.lvm), actions);
    let outcome = finalizer.finalize("quickstart", &new)?;
    println!("   {outcome:?}");
    new.add("dates", "dry dates")?;
    println!("4. the new API is open: {}", new.list()?);
    drop(new);

    println!("5. the old release must not misread the new layout: it refuses to start");
    let old = Notes::start(dir.into(), NotesFeature::Initial, StartIntent::Normal);
    println!("   {}", old.err().ok_or("the old release started")?);
    Ok(())
}
