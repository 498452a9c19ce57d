import Foundation
import XCTest
import RNNTrain

/// sample, eval and inspect on files written by train.
final class CommandTests: XCTestCase {
    static var trained: (dir: String, stdout: String)?

    /// One small character model, trained once for all tests here.
    func model() throws -> (dir: String, stdout: String) {
        if let t = Self.trained { return t }
        let dir = MPIRunner.tempDir()
        MPIRunner.write("""
        seed: 3
        data: {kind: text, path: \(MPIRunner.sharedData("tinyshakespeare.txt"))}
        model: {cell: gru, hidden_size: 24}
        training: {steps: 20, global_batch_size: 8, sequence_length: 16, eval_samples: 50, threads: 1,
                   optimizer: {name: adam, learning_rate: 0.01}}
        output: {directory: \(dir)/out}
        """, to: "\(dir)/c.yaml")
        let r = try MPIRunner.run(np: 2, ["train", "--config", "\(dir)/c.yaml"])
        XCTAssertEqual(r.status, 0, r.stderr)
        Self.trained = (dir, r.stdout)
        return (dir, r.stdout)
    }

    func testEvalReproducesTheTrainingValidationLossAtAnyRankCount() throws {
        let (dir, stdout) = try model()
        let line = try XCTUnwrap(stdout.split(separator: "\n").first { $0.hasPrefix("validation: loss") })
        let trained = try XCTUnwrap(Double(line.split(separator: " ")[2]))
        for np in [0, 3] {
            let r = try MPIRunner.run(np: np, ["eval", "--checkpoint", "\(dir)/out/model.safetensors"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let lossLine = try XCTUnwrap(r.stdout.split(separator: "\n").first { $0.hasPrefix("loss:") }, r.stdout)
            let loss = try XCTUnwrap(Double(lossLine.split(separator: " ")[1]))
            XCTAssertEqual(loss, trained, accuracy: 1e-4, "np=\(np)")
            XCTAssertTrue(r.stdout.contains("bits per character:"))
            XCTAssertEqual(r.stdout.components(separatedBy: "perplexity:").count, 2, "printed once, by rank 0")
        }
    }

    func testSampleIsSeededAndStartsWithThePrime() throws {
        let (dir, _) = try model()
        let ckpt = "\(dir)/out/checkpoints"
        let file = try Checkpoint.resolve(ckpt)
        func sample(_ seed: Int) throws -> String {
            let r = try MPIRunner.run(np: 0, ["sample", "--checkpoint", file, "--prime", "KING:", "--length", "80", "--seed", String(seed), "--temperature", "0.7"])
            XCTAssertEqual(r.status, 0, r.stderr)
            return r.stdout
        }
        let a = try sample(1), b = try sample(1), c = try sample(2)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
        XCTAssertTrue(a.hasPrefix("KING:"))
        XCTAssertEqual(a.trimmingCharacters(in: .newlines).unicodeScalars.count, 85, a)
        let bad = try MPIRunner.run(np: 0, ["sample", "--checkpoint", file, "--prime", "ü"])
        XCTAssertEqual(bad.status, 2)
        XCTAssertEqual(bad.stderr, "rnn-dp: error: --prime: character '\\u{00FC}' is not in the model's vocabulary of 65\n")
    }

    func testInspectReportsTensorsAndChecksum() throws {
        let (dir, _) = try model()
        let path = "\(dir)/out/model.safetensors"
        let r = try MPIRunner.run(np: 0, ["inspect", path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.contains("checksum: ok (fnv1a64:"), r.stdout)
        XCTAssertTrue(r.stdout.contains("  rnn.weight_ih_l0 [72, 65]"), r.stdout)
        XCTAssertTrue(r.stdout.contains("kind: model"))
        // One flipped bit in the data: inspect says so; eval refuses the file with one line.
        var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
        bytes[bytes.count - 3] ^= 0x10
        let bad = "\(dir)/flipped.safetensors"
        _ = FileManager.default.createFile(atPath: bad, contents: Data(bytes))
        let i = try MPIRunner.run(np: 0, ["inspect", bad])
        XCTAssertTrue(i.stdout.contains("checksum: MISMATCH"), i.stdout)
        let e = try MPIRunner.run(np: 2, ["eval", "--checkpoint", bad])
        XCTAssertEqual(e.status, 2)
        XCTAssertEqual(e.stderr.split(separator: "\n").filter { $0.hasPrefix("rnn-dp: error") },
                       ["rnn-dp: error: \(bad): checksum mismatch" + e.stderr.components(separatedBy: "checksum mismatch")[1].split(separator: "\n")[0]])
        let missing = try MPIRunner.run(np: 0, ["inspect", "\(dir)/nope.safetensors"])
        XCTAssertEqual(missing.status, 2)
        XCTAssertEqual(missing.stderr, "rnn-dp: error: \(dir)/nope.safetensors: no such file\n")
    }
}
