import Foundation
import XCTest
@testable import RNNTrain

final class SafeTensorsTests: XCTestCase {
    func tempDir() -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-st-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    func testRoundTripAndLayout() throws {
        let tensors = [SafeTensors.Tensor(name: "b", shape: [2, 3], values: [1, 2, 3, 4, 5, -6.5]),
                       SafeTensors.Tensor(name: "a", shape: [1], values: [.pi])]
        let bytes = try SafeTensors.encode(tensors, metadata: ["format": "rnn-dp/1", "note": "quote \" and \n newline"])
        // 8-byte little-endian header length, header padded so the data starts 8-aligned.
        var n = 0
        for i in 0..<8 { n |= Int(bytes[i]) << (8 * i) }
        XCTAssertEqual((8 + n) % 8, 0)
        XCTAssertEqual(bytes.count, 8 + n + 7 * 4)
        let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as! [String: Any]
        XCTAssertEqual((header["a"] as! [String: Any])["data_offsets"] as! [Int], [0, 4])  // sorted by name
        XCTAssertEqual((header["b"] as! [String: Any])["data_offsets"] as! [Int], [4, 28])
        let file = try SafeTensors.decode(bytes)
        XCTAssertEqual(file.tensor("b")?.values, [1, 2, 3, 4, 5, -6.5])
        XCTAssertEqual(file.tensor("b")?.shape, [2, 3])
        XCTAssertEqual(file.tensor("a")?.values, [.pi])
        XCTAssertEqual(file.metadata["note"], "quote \" and \n newline")
    }

    func testAtomicWriteReplacesAndLeavesNoTemporaryFile() throws {
        let dir = tempDir()
        let path = "\(dir)/model.safetensors"
        try SafeTensors.write(path: path, tensors: [.init(name: "x", shape: [1], values: [1])], metadata: [:])
        try SafeTensors.write(path: path, tensors: [.init(name: "x", shape: [1], values: [2])], metadata: [:])
        XCTAssertEqual(try SafeTensors.read(path: path).tensor("x")?.values, [2])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["model.safetensors"])
    }

    func testFailedWriteKeepsThePreviousFile() throws {
        let dir = tempDir()
        let path = "\(dir)/model.safetensors"
        try SafeTensors.write(path: path, tensors: [.init(name: "x", shape: [1], values: [1])], metadata: [:])
        // A directory where the temporary file would go makes the write fail before the rename.
        let tmp = "\(dir)/.model.safetensors.tmp.\(getpid())"
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: false)
        XCTAssertThrowsError(try SafeTensors.write(path: path, tensors: [.init(name: "x", shape: [1], values: [2])], metadata: [:])) {
            XCTAssertTrue("\($0)".hasPrefix(path), "\($0)")
        }
        XCTAssertEqual(try SafeTensors.read(path: path).tensor("x")?.values, [1])
    }

    func testRejectsMalformedFiles() throws {
        let good = try SafeTensors.encode([.init(name: "w", shape: [2], values: [1, 2])], metadata: [:])
        XCTAssertThrowsError(try SafeTensors.decode(Array(good.prefix(5))))
        XCTAssertThrowsError(try SafeTensors.decode(Array(good.dropLast(1))))  // data shorter than offsets
        var huge = good
        huge[7] = 0x7f  // header length far beyond the file
        XCTAssertThrowsError(try SafeTensors.decode(huge)) { XCTAssertTrue("\($0)".contains("exceeds the file size"), "\($0)") }
        var dtype = good
        let s = String(decoding: dtype, as: UTF8.self).replacingOccurrences(of: "F32", with: "F64")
        dtype = Array(s.utf8)
        XCTAssertThrowsError(try SafeTensors.decode(dtype)) { XCTAssertTrue("\($0)".contains("unsupported dtype F64"), "\($0)") }
    }
}
