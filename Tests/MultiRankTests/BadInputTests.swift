import Foundation
import XCTest

/// Every bad input ends a 2-rank job within seconds with one clear line and a nonzero exit.
final class BadInputTests: XCTestCase {
    func good(_ dir: String, data: String = "data: {kind: synthetic, length: 5}") -> String {
        "seed: 1\n\(data)\nmodel: {hidden_size: 4}\ntraining: {steps: 3, global_batch_size: 4}\noutput: {directory: \(dir)/out}\n"
    }

    /// Runs at np=2 and checks the exit code, the message (exactly once), and that nothing that
    /// looks like a crash or an MPI abort banner appears.
    func expectFailure(_ yaml: String?, sets: [String] = [], np: Int = 2, code: Int32 = 2, message: String,
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = MPIRunner.tempDir()
        let path = "\(dir)/c.yaml"
        if let yaml { MPIRunner.write(yaml, to: path) }
        var args = ["train", "--config", path]
        for s in sets { args += ["--set", s] }
        let r = try MPIRunner.run(np: np, args, timeout: 60, file: file, line: line)
        XCTAssertEqual(r.status, code, r.stderr, file: file, line: line)
        let errorLines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("rnn-dp: error") }
        XCTAssertEqual(errorLines.count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(errorLines.first?.contains(message) ?? false, "expected '\(message)' in: \(r.stderr)", file: file, line: line)
        for bad in ["Fatal error", "Stack dump", "MPI_ABORT", "backtrace"] {
            XCTAssertFalse(r.stderr.contains(bad), "\(bad) in: \(r.stderr)", file: file, line: line)
        }
        XCTAssertLessThan(r.seconds, 30, file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/out/model.safetensors"), file: file, line: line)
    }

    func testUnknownKey() throws {
        let dir = MPIRunner.tempDir()
        try expectFailure(good(dir) + "trainng: {steps: 3}\n", message: "c.yaml:6: trainng: unknown key (did you mean training?)")
    }

    func testWrongTypeFromTheCommandLine() throws {
        try expectFailure(good(MPIRunner.tempDir()), sets: ["model.layers=two"], message: "--set: model.layers: expected an integer in 1...64, got 'two'")
    }

    func testOutOfRangeValue() throws {
        try expectFailure(good(MPIRunner.tempDir()), sets: ["data.length=1"], message: "data.length: expected an integer in 2...1000000, got '1'")
    }

    func testMissingConfigFile() throws {
        try expectFailure(nil, message: "c.yaml: no such config file")
    }

    func testInvalidYAML() throws {
        try expectFailure("model: {hidden_size: 4\n", message: "c.yaml: invalid YAML")
    }

    func testMissingDataFile() throws {
        let dir = MPIRunner.tempDir()
        try expectFailure(good(dir, data: "data: {kind: text, path: \(dir)/missing.txt}"), message: "data: \(dir)/missing.txt: no such file")
    }

    func testCSVWithGapsNeedsInterpolation() throws {
        let dir = MPIRunner.tempDir()
        let csv = MPIRunner.sharedData("co2_maunaloa_weekly.csv")
        try expectFailure(good(dir, data: "data: {kind: csv, path: \(csv), column: co2}"), message: "is missing a value (set data.interpolate_missing: true to fill gaps)")
    }

    func testGlobalBatchSmallerThanRankCount() throws {
        try expectFailure(good(MPIRunner.tempDir()), sets: ["training.global_batch_size=1"],
                          message: "training.global_batch_size 1 is smaller than the number of ranks 2")
    }

    func testWrongTypeInTheFile() throws {
        let dir = MPIRunner.tempDir()
        try expectFailure(good(dir).replacingOccurrences(of: "seed: 1\n", with: "") + "seed: -3\n",
                          message: "c.yaml:5: seed: expected an integer >= 0, got '-3'")
    }

    func testSequenceLongerThanTheText() throws {
        let dir = MPIRunner.tempDir()
        MPIRunner.write("short text\n", to: "\(dir)/t.txt")
        try expectFailure(good(dir, data: "data: {kind: text, path: \(dir)/t.txt}"), sets: ["training.sequence_length=50"],
                          message: "the training part has 9 characters, fewer than sequence_length + 1 = 51")
    }

    func testEmptyTextFile() throws {
        let dir = MPIRunner.tempDir()
        MPIRunner.write("", to: "\(dir)/empty.txt")
        try expectFailure(good(dir, data: "data: {kind: text, path: \(dir)/empty.txt}"), message: "\(dir)/empty.txt: the training part has 0 characters")
    }

    func testNonNumericCSVColumn() throws {
        let dir = MPIRunner.tempDir()
        MPIRunner.write("month,value\n1949-01,112\n1949-02,n/a\n", to: "\(dir)/s.csv")
        try expectFailure(good(dir, data: "data: {kind: csv, path: \(dir)/s.csv, column: value}"),
                          message: "\(dir)/s.csv:3: column 'value' has 'n/a', not a number")
    }

    func testOptionOfAnotherDataKind() throws {
        try expectFailure(good(MPIRunner.tempDir()), sets: ["data.column=value"],
                          message: "data.column: applies only when data.kind is csv (it is synthetic)")
    }

    func testOutputDirectoryThatCannotBeCreated() throws {
        let dir = MPIRunner.tempDir()
        MPIRunner.write("a file, not a directory", to: "\(dir)/blocker")
        try expectFailure(good(dir), sets: ["output.directory=\(dir)/blocker/out"], code: 1, message: "output.directory \(dir)/blocker/out: cannot create it")
    }
}
