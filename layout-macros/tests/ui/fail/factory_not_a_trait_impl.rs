use layout_core::{belongs_to_layout_version, LayoutFeature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
}

pub trait Handler {
    fn handle(&self);
}

#[belongs_to_layout_version(OmFeature::InitialVersion, key = "CreateKey")]
#[derive(Default)]
pub struct CreateKey;

#[belongs_to_layout_version(OmFeature::InitialVersion, key = "CreateKey")]
impl CreateKey {
    pub fn handle(&self) {}
}

#[derive(Default)]
pub struct Generic<T>(T);

#[belongs_to_layout_version(OmFeature::InitialVersion, key = "Generic")]
impl<T: Send> Handler for Generic<T> {
    fn handle(&self) {}
}

#[belongs_to_layout_version(OmFeature::InitialVersion, key = "Function")]
pub fn handle() {}

fn main() {}
