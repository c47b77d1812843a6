use layout_core::{belongs_to_layout_version, LayoutFeature};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, LayoutFeature)]
pub enum OmFeature {
    #[layout(version = 0, description = "Initial layout")]
    InitialVersion,
}

pub trait Handler {
    fn handle(&self);
}

#[derive(Default)]
pub struct A;
#[belongs_to_layout_version(OmFeature::InitialVersion)]
impl Handler for A {
    fn handle(&self) {}
}

#[derive(Default)]
pub struct B;
#[belongs_to_layout_version(OmFeature::InitialVersion, key = CreateKey)]
impl Handler for B {
    fn handle(&self) {}
}

#[derive(Default)]
pub struct C;
#[belongs_to_layout_version(OmFeature::InitialVersion, key = " ")]
impl Handler for C {
    fn handle(&self) {}
}

#[derive(Default)]
pub struct D;
#[belongs_to_layout_version(key = "CreateKey", name = "D")]
impl Handler for D {
    fn handle(&self) {}
}

fn main() {}
