
struct Params { seed: u32, rounds: u32, count: u32, pad: u32 }
@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= params.count) { return; }
    var x = params.seed ^ (i * 0x9E3779B9u);
    for (var r = 0u; r < params.rounds; r++) {
        x ^= x << 13u;
        x ^= x >> 17u;
        x ^= x << 5u;
        x = x * 0x2C1B3C6Du + 0x297A2D39u;
    }
    out[i] = x;
}
