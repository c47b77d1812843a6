use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
union Catalog {
    version: u32,
}

fn main() {}
