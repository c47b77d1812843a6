use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
#[layout(version = 0, description = "Initial layout")]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
}

fn main() {}
