/// FNV-1a over 64 bits of the raw bytes of a buffer: equal buffers give equal values, so comparing
/// one word per rank detects replicas that drifted apart. Not a cryptographic hash.
public func fnv1a64(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = 0xCBF2_9CE4_8422_2325) -> UInt64 {
    var h = seed
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x0000_0100_0000_01B3
    }
    return h
}

extension Buffer {
    /// Checksum of the raw bytes of the buffer (bitwise equality, not numerical closeness).
    public func checksum() -> UInt64 {
        fnv1a64(UnsafeRawBufferPointer(start: pointer, count: count * MemoryLayout<S>.stride))
    }
}
