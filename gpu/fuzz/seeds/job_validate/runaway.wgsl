
@group(0) @binding(0) var<storage, read_write> data: array<u32>;

@compute @workgroup_size(64)
fn main() {
    for (var i = 0u; i < 0xFFFFFFFFu; i++) {
        if (data[0] == 12345u) { return; }
        data[1] = data[1] + 1u;
    }
}
