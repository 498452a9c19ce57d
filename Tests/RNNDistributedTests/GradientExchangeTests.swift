import XCTest
@testable import RNNDistributed

/// A communicator of `size` ranks seen from one of them, in which every other rank holds the same
/// values, so a sum is `size` times the local value. It records every call in order, and a
/// started allreduce completes only after `testsToComplete` calls of `test` on it (or a `wait`),
/// so several requests are outstanding at once as they are over a real network.
final class RecordingCommunicator: Communicator {
    enum Call: Equatable { case start(Range<Int>), test(Int, done: Bool), wait(Int), blocking(Int) }
    let size: Int
    var rank: Int { 0 }
    var localSize: Int { 1 }
    var name: String { "recording" }
    let base: UnsafeMutablePointer<Float>
    let testsToComplete: Int
    private(set) var calls: [Call] = []
    private var requests: [(buffer: UnsafeMutableBufferPointer<Float>, tests: Int, done: Bool)] = []
    private(set) var mostOutstanding = 0

    init(size: Int, base: UnsafeMutablePointer<Float>, testsToComplete: Int) {
        self.size = size
        self.base = base
        self.testsToComplete = testsToComplete
    }

    var outstanding: Int { requests.filter { !$0.done }.count }

    private func complete(_ id: Int) {
        guard !requests[id].done else { return }
        for i in requests[id].buffer.indices { requests[id].buffer[i] *= Float(size) }
        requests[id].done = true
    }

    func startAllreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> Int {
        let lo = buffer.baseAddress! - base
        calls.append(.start(lo..<(lo + buffer.count)))
        requests.append((buffer, 0, false))
        mostOutstanding = max(mostOutstanding, outstanding)
        return requests.count - 1
    }
    func test(_ id: Int) throws -> Bool {
        requests[id].tests += 1
        if requests[id].tests >= testsToComplete { complete(id) }
        calls.append(.test(id, done: requests[id].done))
        return requests[id].done
    }
    func wait(_ id: Int) throws { calls.append(.wait(id)); complete(id) }
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        calls.append(.blocking(buffer.count))
        for i in buffer.indices { buffer[i] *= Float(size) }
    }

    func barrier() throws {}
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws { XCTFail("unexpected") }
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Int64>) throws { XCTFail("unexpected") }
    func allreduceMax(_ buffer: UnsafeMutableBufferPointer<Double>) throws { XCTFail("unexpected") }
    func broadcast(_ buffer: UnsafeMutableBufferPointer<Float>, root: Int) throws {}
    func broadcast(_ buffer: UnsafeMutableBufferPointer<UInt8>, root: Int) throws {}
    func allreduceSumHalf(_ buffer: UnsafeMutableBufferPointer<UInt16>, bfloat: Bool) throws { XCTFail("unexpected") }
    func allgather(_ value: UInt64) throws -> [UInt64] { [UInt64](repeating: value, count: size) }
    func abort(code: Int32) -> Never { fatalError("abort \(code)") }
    func finalize() {}
}

final class GradientExchangeTests: XCTestCase {
    /// A buffer of `count` floats 1, 2, 3, ... and an exchange over it.
    func make(count: Int, bucketFloats: Int, size: Int = 3, testsToComplete: Int = 3)
        -> (UnsafeMutableBufferPointer<Float>, RecordingCommunicator, GradientExchange) {
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
        for i in 0..<count { buffer[i] = Float(i + 1) }
        let comm = RecordingCommunicator(size: size, base: buffer.baseAddress!, testsToComplete: testsToComplete)
        return (buffer, comm, GradientExchange(comm: comm, buffer: buffer, bucketBytes: bucketFloats * 4))
    }

    var starts: (RecordingCommunicator) -> [Range<Int>] {
        { $0.calls.compactMap { if case .start(let r) = $0 { return r } else { return nil } } }
    }

    /// Buckets are cut from the end of the buffer (where gradients become final first), cover it
    /// exactly once, and `ready(from:)` starts only buckets that lie wholly in the final part,
    /// in that fixed order; several are outstanding while the backward pass goes on; `finish`
    /// completes every one, and every element is reduced exactly once.
    func testSevenBucketsStartInOrderAsTheirGradientsBecomeFinal() throws {
        let (buffer, comm, exchange) = make(count: 65, bucketFloats: 10)
        defer { buffer.deallocate() }
        XCTAssertEqual(exchange.buckets, [55..<65, 45..<55, 35..<45, 25..<35, 15..<25, 5..<15, 0..<5])
        exchange.begin()
        try exchange.ready(from: 60)  // the head's part of the last bucket only: nothing starts
        XCTAssertEqual(starts(comm), [])
        try exchange.ready(from: 44)  // buckets [55, 65) and [45, 55) are final; [35, 45) is not
        XCTAssertEqual(starts(comm), [55..<65, 45..<55])
        try exchange.progress()
        try exchange.ready(from: 20)
        XCTAssertEqual(starts(comm), [55..<65, 45..<55, 35..<45, 25..<35])
        XCTAssertGreaterThanOrEqual(comm.mostOutstanding, 3, "requests overlap: \(comm.calls)")
        XCTAssertEqual(Array(buffer[0..<25]), (1...25).map(Float.init), "no element outside a started bucket is touched")
        try exchange.finish()
        XCTAssertEqual(starts(comm), exchange.buckets, "every bucket started once, from the end")
        XCTAssertEqual(comm.outstanding, 0)
        XCTAssertEqual(Array(buffer), (1...65).map { Float($0 * 3) }, "each element summed exactly once")
        // A second step starts over with the same buckets in the same order.
        let before = comm.calls.count
        exchange.begin()
        try exchange.finish()
        XCTAssertEqual(Array(starts(comm)[7...]), exchange.buckets)
        XCTAssertEqual(comm.calls.count - before, 7 + 7 + comm.calls[before...].filter { if case .test = $0 { return true } else { return false } }.count)
    }

    /// Never more than `maxOutstanding` requests at once: the oldest is waited for first, the
    /// same on every rank since the decision depends on counts only.
    func testOutstandingRequestsAreBoundedOldestFirst() throws {
        let n = GradientExchange.maxOutstanding + 40
        let (buffer, comm, exchange) = make(count: n, bucketFloats: 1, testsToComplete: .max)
        defer { buffer.deallocate() }
        exchange.begin()
        try exchange.ready(from: 0)
        XCTAssertEqual(comm.mostOutstanding, GradientExchange.maxOutstanding)
        let waits = comm.calls.compactMap { if case .wait(let id) = $0 { return id } else { return nil } }
        XCTAssertEqual(waits, Array(0..<40), "the oldest requests were completed first")
        try exchange.finish()
        XCTAssertEqual(comm.outstanding, 0)
        XCTAssertEqual(Array(buffer), (1...n).map { Float($0 * 3) })
    }

    /// A bucket larger than the buffer is one bucket; a zero-size request still cuts buckets of
    /// one element (never an empty or endless cut).
    func testBucketCutsAtTheEdges() {
        let (a, _, one) = make(count: 9, bucketFloats: 100)
        defer { a.deallocate() }
        XCTAssertEqual(one.buckets, [0..<9])
        let (b, _, tiny) = make(count: 3, bucketFloats: 0)
        defer { b.deallocate() }
        XCTAssertEqual(tiny.buckets, [2..<3, 1..<2, 0..<1])
    }
}
