use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout(version = 0, description = "Initial layout")]
    Initial,
    #[layout(version = 1, description = "Buckets carry a storage layout")]
    Foo,
    #[layout(version = 1, description = "Multi-tenancy tables")]
    Bar,
    #[layout(version = 2, description = "Snapshots in their own table")]
    Snapshots,
}

fn main() {}
