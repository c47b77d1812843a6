use layout_core::LayoutFeature;

#[derive(LayoutFeature)]
enum Catalog {
    #[layout]
    Initial,
    #[layout = "version 1"]
    Buckets,
    #[layout(version 2, description = "Missing `=`")]
    Tenants,
    #[layout(version, description = "A bare key")]
    Snapshots,
    #[layout(version = 4, description("In parentheses"))]
    Quotas,
    #[layout(version = 5, description = "A flag with a value", deprecated = true)]
    Old,
}

fn main() {}
