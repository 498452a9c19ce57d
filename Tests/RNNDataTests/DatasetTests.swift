import Foundation
import XCTest
import RNN
@testable import RNNData

/// ../shared/data beside the checkout (never copied into the project).
func sharedData(_ name: String, file: StaticString = #filePath) -> String {
    URL(fileURLWithPath: "\(file)").deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("shared/data/\(name)").path
}

func temporaryFile(_ contents: String, name: String = "data.txt") -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("rnn-dp-tests-\(UUID().uuidString)")
    try! FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = dir.appendingPathComponent(name).path
    _ = FileManager.default.createFile(atPath: path, contents: Data(contents.utf8))
    return path
}

final class TextDatasetTests: XCTestCase {
    func testTinyShakespeareVocabularySplitAndWindows() throws {
        let path = sharedData("tinyshakespeare.txt")
        let d = try TextDataset(path: path, validationFraction: 0.1, steps: 16, output: .everyStep, seed: 1, maxValidation: 100)
        // The data README: 65 characters, 90/10 split = 1,003,854 / 111,540.
        XCTAssertEqual(d.vocabulary.count, 65)
        XCTAssertEqual(d.train.count, 1_003_854)
        XCTAssertEqual(d.validation.count + d.droppedValidationCharacters, 111_540)
        XCTAssertEqual(d.vocabulary.decode(Array(d.train.prefix(14))), "First Citizen:")
        XCTAssertEqual(d.validationCount, 100)
        let b = d.trainingBatch(step: 3, globalBatch: 5, rows: 0..<5)
        XCTAssertEqual(b.tokens.count, 16 * 5)
        XCTAssertEqual(b.targetClasses.count, 16 * 5)
        // Targets are the inputs shifted by one step (time-major layout).
        for bb in 0..<5 { for t in 0..<15 { XCTAssertEqual(b.targetClasses[t * 5 + bb], b.tokens[(t + 1) * 5 + bb]) } }
    }

    /// The union of the shards of a global batch does not depend on the number of ranks.
    func testShardsOfAGlobalBatchAreIndependentOfRankCount() throws {
        let path = temporaryFile(String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 40))
        let d = try TextDataset(path: path, validationFraction: 0.1, steps: 6, output: .everyStep, seed: 7, maxValidation: 10)
        let whole = d.trainingBatch(step: 12, globalBatch: 7, rows: 0..<7)
        for n in [2, 3, 7] {
            var sample: [[Int32]] = []
            for r in 0..<n {
                let rows = (r * 7 / n)..<((r + 1) * 7 / n)
                let part = d.trainingBatch(step: 12, globalBatch: 7, rows: rows)
                for b in 0..<rows.count { sample.append((0..<6).map { part.tokens[$0 * rows.count + b] }) }
            }
            let expected = (0..<7).map { b in (0..<6).map { whole.tokens[$0 * 7 + b] } }
            XCTAssertEqual(sample, expected, "n=\(n)")
        }
        XCTAssertNotEqual(d.trainingBatch(step: 13, globalBatch: 7, rows: 0..<7).tokens, whole.tokens)
    }

    func testLastStepTargetIsTheCharacterAfterTheWindow() throws {
        let path = temporaryFile("abcdefghijklmnopqrstuvwxyz")
        let d = try TextDataset(path: path, validationFraction: 0, steps: 3, output: .lastStep, seed: 1, maxValidation: 0)
        let b = d.trainingBatch(step: 0, globalBatch: 4, rows: 0..<4)
        for s in 0..<4 { XCTAssertEqual(b.targetClasses[s], b.tokens[2 * 4 + s] + 1) }
    }

    func testErrorsNameTheFile() {
        XCTAssertThrowsError(try TextDataset(path: "/nonexistent/x.txt", validationFraction: 0.1, steps: 4, output: .everyStep, seed: 1, maxValidation: 1)) {
            XCTAssertEqual("\($0)", "/nonexistent/x.txt: no such file")
        }
        let short = temporaryFile("abc")
        XCTAssertThrowsError(try TextDataset(path: short, validationFraction: 0, steps: 4, output: .everyStep, seed: 1, maxValidation: 1)) {
            XCTAssertTrue("\($0)".contains("fewer than sequence_length + 1"), "\($0)")
        }
        let binary = temporaryFile("")
        _ = FileManager.default.createFile(atPath: binary, contents: Data([0xff, 0xfe, 0x00, 0xc3]))
        XCTAssertThrowsError(try TextDataset(path: binary, validationFraction: 0, steps: 1, output: .everyStep, seed: 1, maxValidation: 1)) {
            XCTAssertTrue("\($0)".contains("not valid UTF-8"), "\($0)")
        }
    }
}

final class SeriesDatasetTests: XCTestCase {
    func testSunspotsNormalizedWithTrainingStatistics() throws {
        let d = try SeriesDataset(path: sharedData("sunspots_yearly.csv"), column: "SUNACTIVITY", validationFraction: 0.1,
                                  interpolateMissing: false, steps: 20, output: .lastStep, seed: 1, maxValidation: 1000)
        XCTAssertEqual(d.values.count, 309)
        XCTAssertEqual(d.trainCount, 278)
        let train = d.values.prefix(278).map(Double.init)
        XCTAssertEqual(train.reduce(0, +) / 278, 0, accuracy: 1e-5)
        XCTAssertEqual(train.map { $0 * $0 }.reduce(0, +) / 278, 1, accuracy: 1e-4)
        // Every validation value is predicted once.
        XCTAssertEqual(d.validationCount, 309 - 278)
        let b = d.trainingBatch(step: 0, globalBatch: 3, rows: 0..<3)
        XCTAssertEqual(b.features.count, 20 * 3)
        XCTAssertEqual(b.targetValues.count, 3)
    }

    func testMissingValuesAreAnErrorUnlessInterpolated() throws {
        let path = sharedData("co2_maunaloa_weekly.csv")
        XCTAssertThrowsError(try SeriesDataset(path: path, column: "co2", validationFraction: 0.1, interpolateMissing: false,
                                               steps: 10, output: .lastStep, seed: 1, maxValidation: 10)) {
            XCTAssertTrue("\($0)".contains("co2_maunaloa_weekly.csv:"), "\($0)")
            XCTAssertTrue("\($0)".contains("interpolate_missing"), "\($0)")
        }
        let d = try SeriesDataset(path: path, column: nil, validationFraction: 0.1, interpolateMissing: true,
                                  steps: 10, output: .lastStep, seed: 1, maxValidation: 10)
        XCTAssertEqual(d.filled, 59)  // the data README: 59 empty weeks
        XCTAssertEqual(d.values.count, 2284)
    }

    func testInterpolationIsLinear() throws {
        let path = temporaryFile("t,v\n0,1\n1,\n2,\n3,4\n" + (4..<30).map { "\($0),\($0)" }.joined(separator: "\n"), name: "s.csv")
        let d = try SeriesDataset(path: path, column: "v", validationFraction: 0, interpolateMissing: true,
                                  steps: 3, output: .everyStep, seed: 1, maxValidation: 0)
        let raw = d.values.map { Double($0) * d.std + d.mean }
        XCTAssertEqual(raw[1], 2, accuracy: 1e-4)
        XCTAssertEqual(raw[2], 3, accuracy: 1e-4)
    }

    func testBadColumnAndBadNumber() {
        let path = temporaryFile("a,b,c\n1,2,3\n", name: "x.csv")
        XCTAssertThrowsError(try SeriesDataset(path: path, column: "zz", validationFraction: 0, interpolateMissing: false, steps: 1, output: .lastStep, seed: 1, maxValidation: 0)) {
            XCTAssertTrue("\($0)".contains("no column 'zz'"), "\($0)")
        }
        XCTAssertThrowsError(try SeriesDataset(path: path, column: nil, validationFraction: 0, interpolateMissing: false, steps: 1, output: .lastStep, seed: 1, maxValidation: 0)) {
            XCTAssertTrue("\($0)".contains("set data.column"), "\($0)")
        }
        let bad = temporaryFile("t,v\n1,2\n2,abc\n", name: "y.csv")
        XCTAssertThrowsError(try SeriesDataset(path: bad, column: "v", validationFraction: 0, interpolateMissing: false, steps: 1, output: .lastStep, seed: 1, maxValidation: 0)) {
            XCTAssertTrue("\($0)".hasSuffix("y.csv:3: column 'v' has 'abc', not a number"), "\($0)")
        }
    }
}

final class AddingProblemTests: XCTestCase {
    func testTargetsAreTheSumOfTheTwoMarkedValues() throws {
        let d = try AddingProblem(length: 10, seed: 3, validationSamples: 50)
        let b = d.trainingBatch(step: 4, globalBatch: 8, rows: 0..<8)
        XCTAssertEqual(b.features.count, 10 * 8 * 2)
        for s in 0..<8 {
            var marked: [Int] = []
            var sum: Float = 0
            for t in 0..<10 where b.features[(t * 8 + s) * 2 + 1] == 1 {
                marked.append(t)
                sum += b.features[(t * 8 + s) * 2]
            }
            XCTAssertEqual(marked.count, 2)
            XCTAssertLessThan(marked[0], 5)
            XCTAssertGreaterThanOrEqual(marked[1], 5)
            XCTAssertEqual(b.targetValues[s], sum)
        }
    }

    func testRowsAreIndependentOfShardingAndDeterministic() throws {
        let d = try AddingProblem(length: 6, seed: 3, validationSamples: 0)
        let whole = d.trainingBatch(step: 2, globalBatch: 5, rows: 0..<5)
        let tail = d.trainingBatch(step: 2, globalBatch: 5, rows: 3..<5)
        XCTAssertEqual(Array(whole.targetValues[3..<5]), tail.targetValues)
        XCTAssertEqual(try AddingProblem(length: 6, seed: 3, validationSamples: 0).trainingBatch(step: 2, globalBatch: 5, rows: 0..<5).features, whole.features)
        XCTAssertNotEqual(try AddingProblem(length: 6, seed: 4, validationSamples: 0).trainingBatch(step: 2, globalBatch: 5, rows: 0..<5).features, whole.features)
    }

    /// The constant prediction 1 scores about 1/6 = 0.167, the baseline quoted in the issue.
    func testConstantPredictorScoresTheBaseline() throws {
        let d = try AddingProblem(length: 20, seed: 1, validationSamples: 20000)
        let b = d.validationBatch(0..<20000)
        let mse = b.targetValues.map { Double($0 - 1) * Double($0 - 1) }.reduce(0, +) / 20000
        XCTAssertEqual(mse, 1.0 / 6, accuracy: 0.01)
    }
}
