import Foundation
import XCTest
import RNNTrain

/// rnn-dp's model files and checkpoints are ordinary safetensors: the reference Python package
/// (`safetensors`, with numpy) reads every tensor of them bit for bit as rnn-dp does, and the same
/// metadata. Runs Tests/interop/read_with_safetensors.py; needs python3 with safetensors and
/// numpy, which scripts/test.sh installs. Without them this test fails rather than skips.
final class PythonInteropTests: XCTestCase {
    static let reader = MPIRunner.projectRoot.appendingPathComponent("Tests/interop/read_with_safetensors.py").path
    static let goodFixture = MPIRunner.projectRoot
        .appendingPathComponent("Tests/RNNTrainTests/Fixtures/bad-checkpoints/good.safetensors").path

    struct PythonMissing: Error, CustomStringConvertible {
        var description: String { "python3 with safetensors and numpy is missing; run scripts/test.sh" }
    }

    struct Outcome {
        let status: Int32
        let stdout: Data
        let stderr: String
    }

    /// `python3 args`, found on PATH; output through files so a large summary cannot block a pipe.
    func python(_ args: [String], timeout: Double = 120) throws -> Outcome {
        let dir = MPIRunner.tempDir()
        let out = URL(fileURLWithPath: "\(dir)/py.out"), err = URL(fileURLWithPath: "\(dir)/py.err")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3"] + args
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        p.standardInput = FileHandle.nullDevice
        let start = Date()
        try p.run()
        while p.isRunning && Date().timeIntervalSince(start) < timeout { usleep(20_000) }
        if p.isRunning {
            p.terminate()
            XCTFail("python3 \(args.joined(separator: " ")) did not finish within \(timeout) s")
        }
        p.waitUntilExit()
        return Outcome(status: p.terminationStatus, stdout: (try? Data(contentsOf: out)) ?? Data(),
                       stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    }

    /// Fails the test (not a skip: CI must have them) unless python3 can import safetensors and numpy.
    func requirePythonSafetensors() throws {
        let r = try python(["-c", "import safetensors, numpy"])
        guard r.status == 0 else {
            XCTFail("python3 with the safetensors and numpy packages is required for this test; scripts/test.sh installs them "
                    + "(pip install safetensors numpy). python3 said (exit \(r.status)): \(r.stderr)")
            throw PythonMissing()
        }
    }

    /// The reader's output. Parsed with JSONDecoder, which reads doubles exactly (JSONSerialization
    /// on Linux goes through NSDecimalNumber and can be off in the last bit).
    struct Summary: Decodable {
        let tensors: [String: TensorSummary]
        let dtypes: [String: String]
        let metadata: [String: String]
        let bits: [String: [UInt32]]
    }

    /// [shape, float64 sum, first value] of one tensor.
    struct TensorSummary: Decodable {
        let shape: [Int]
        let sum: Number
        let first: Number?
        init(from decoder: Decoder) throws {
            var c = try decoder.unkeyedContainer()
            shape = try c.decode([Int].self)
            sum = try c.decode(Number.self)
            first = try c.decodeNil() ? nil : try c.decode(Number.self)
        }
    }

    /// A JSON number, or "nan" / "inf" / "-inf".
    enum Number: Decodable, Equatable {
        case finite(Double)
        case nonFinite(String)
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let d = try? c.decode(Double.self) { self = .finite(d) } else { self = .nonFinite(try c.decode(String.self)) }
        }
        init(_ x: Double) {
            self = x.isNaN ? .nonFinite("nan") : x.isInfinite ? .nonFinite(x > 0 ? "inf" : "-inf") : .finite(x)
        }
    }

    /// The reader's JSON summary of `path` must match rnn-dp's own reading of it exactly.
    func checkSameAsSwift(_ path: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let swift = try SafeTensors.read(path: path)
        let r = try python([Self.reader, path, "--bits"])
        XCTAssertEqual(r.status, 0, "the safetensors package refused \(path): \(r.stderr)", file: file, line: line)
        guard r.status == 0 else { return }
        let py = try JSONDecoder().decode(Summary.self, from: r.stdout)

        XCTAssertFalse(swift.tensors.isEmpty, path, file: file, line: line)
        XCTAssertEqual(py.tensors.keys.sorted(), swift.tensors.map(\.name), "tensor names in \(path)", file: file, line: line)
        XCTAssertEqual(py.metadata, swift.metadata, "metadata of \(path)", file: file, line: line)
        for t in swift.tensors {
            let what = "\(path): \(t.name)"
            guard let summary = py.tensors[t.name] else { continue }  // reported above
            XCTAssertEqual(py.dtypes[t.name], "float32", what, file: file, line: line)
            XCTAssertEqual(summary.shape, t.shape, "\(what): shape", file: file, line: line)
            // Every value, bit for bit.
            XCTAssertEqual(py.bits[t.name], t.values.map(\.bitPattern), "\(what): values differ bitwise", file: file, line: line)
            // The first value exactly (Python prints the float64 widening of the float32).
            XCTAssertEqual(summary.first, t.values.first.map { Number(Double($0)) }, "\(what): first value", file: file, line: line)
            if case .finite(let x)? = summary.first, let first = t.values.first {
                XCTAssertEqual(Float(x).bitPattern, first.bitPattern, "\(what): first value", file: file, line: line)
            }
            // The float64 sum: numpy sums pairwise, Swift here in order; both are within
            // n * eps * sum|x| of the exact sum.
            if t.values.allSatisfy(\.isFinite) {
                guard case .finite(let pySum) = summary.sum else {
                    XCTFail("\(what): sum \(summary.sum)", file: file, line: line)
                    continue
                }
                let sum = t.values.reduce(0.0) { $0 + Double($1) }
                let magnitude = t.values.reduce(0.0) { $0 + Double(abs($1)) }
                let tolerance = Double(max(t.values.count, 1)) * 2.3e-16 * magnitude
                XCTAssertLessThanOrEqual(abs(pySum - sum), tolerance, "\(what): sum \(pySum) (Python) vs \(sum) (Swift)", file: file, line: line)
            }
        }
    }

    /// A short LSTM run with batch norm and Adam (so the checkpoint holds running statistics and
    /// optimizer state too): model.safetensors and every checkpoint read the same in Python.
    func testPythonSafetensorsReadsModelAndCheckpointsExactly() throws {
        try requirePythonSafetensors()
        let dir = MPIRunner.tempDir()
        let config = "\(dir)/c.yaml"
        MPIRunner.write("""
        seed: 3
        data: {kind: synthetic, length: 6}
        model: {cell: lstm, hidden_size: 5, layers: 2, batch_norm: true}
        training:
          global_batch_size: 4
          steps: 4
          threads: 1
          optimizer: {name: adam, learning_rate: 0.01}
        checkpoint: {every: 2, keep: 5}
        output: {directory: \(dir)/out}
        """, to: config)
        let r = try MPIRunner.run(np: 0, ["train", "--config", config], timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        guard r.status == 0 else { return }

        let model = "\(dir)/out/model.safetensors"
        let checkpoints = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/out/checkpoints")
            .filter { $0.hasSuffix(".safetensors") }.sorted().map { "\(dir)/out/checkpoints/\($0)" }
        XCTAssertEqual(checkpoints.map { URL(fileURLWithPath: $0).lastPathComponent },
                       ["ckpt-00000002.safetensors", "ckpt-00000004.safetensors"])
        for path in [model] + checkpoints {
            _ = try Checkpoint.read(path: path)  // rnn-dp's own validation (format, checksum) passes
            try checkSameAsSwift(path)
        }
        // The checkpoint carries more than the model: optimizer state and running statistics.
        let last = try SafeTensors.read(path: try XCTUnwrap(checkpoints.last))
        XCTAssertTrue(last.tensors.contains { $0.name.hasPrefix("optimizer.") }, last.tensors.map(\.name).description)
        XCTAssertGreaterThan(last.tensors.count, try SafeTensors.read(path: model).tensors.count)
    }

    /// The committed good fixture (written by scripts/make_bad_checkpoints.py in rnn-dp's layout)
    /// also reads the same (it includes a -0.0).
    func testPythonSafetensorsReadsTheGoodFixture() throws {
        try requirePythonSafetensors()
        try checkSameAsSwift(Self.goodFixture)
    }
}
