/// A fixed-size, zero-initialized, heap-allocated array of scalars with a stable address.
///
/// Workspaces and the flat parameter and gradient buffers are Buffers: allocated once, passed to
/// BLAS as raw pointers, never copied on write. The shape is documented where each one is made.
public final class Buffer<S: RNNScalar> {
    public let count: Int
    public let pointer: UnsafeMutablePointer<S>
    private let owned: Bool

    public init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
        owned = true
    }

    /// A view of `count` scalars of memory someone else owns and keeps alive (a range of a
    /// larger buffer: a pipeline stage's parameters, which its optimizer updates).
    public init(viewing pointer: UnsafeMutablePointer<S>, count: Int) {
        self.count = count
        self.pointer = pointer
        owned = false
    }

    public convenience init(_ values: [S]) {
        self.init(count: values.count)
        for i in 0..<values.count { pointer[i] = values[i] }
    }

    deinit { if owned { pointer.deallocate() } }

    public subscript(i: Int) -> S {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    public func zero() { pointer.update(repeating: 0, count: count) }
    public func copy(from other: Buffer<S>) {
        precondition(other.count == count)
        pointer.update(from: other.pointer, count: count)
    }
    public var array: [S] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
    public var buffer: UnsafeMutableBufferPointer<S> { UnsafeMutableBufferPointer(start: pointer, count: count) }
}
