use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
struct Catalog {
    version: u32,
}

fn main() {}
