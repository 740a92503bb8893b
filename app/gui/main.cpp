// quantlens: the GUI. `quantlens [MODEL]` opens MODEL; with no argument it opens the first of
// $QUANTLENS_DEFAULT_MODEL, the SmolLM2 GGUF installed by the set-up script, and the stories260K
// test model, else asks for a file. `--screenshot FILE` waits until the model is loaded, the
// tensor (`--select NAME`) is selected and its statistics are drawn, saves the window to FILE and
// quits; it reads and writes no user settings, so README screenshots are reproducible under
// xvfb-run or QT_QPA_PLATFORM=offscreen (resources/screenshots/README.md has the commands).
#include <QAbstractButton>
#include <QApplication>
#include <QCommandLineParser>
#include <QDir>
#include <QFileInfo>
#include <QHash>
#include <QImage>
#include <QPixmap>
#include <QSettings>
#include <QStandardPaths>
#include <QTemporaryDir>
#include <QTimer>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <utility>

#include "appsession.h"
#include "icons.h"
#include "mainwindow.h"

namespace {

QString defaultModel()
{
    const QString fromEnv = qEnvironmentVariable("QUANTLENS_DEFAULT_MODEL");
    if (!fromEnv.isEmpty()) return fromEnv;
    const QString smol = QStandardPaths::writableLocation(QStandardPaths::GenericDataLocation) +
                         QStringLiteral("/quantlens/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if (QFileInfo::exists(smol)) return smol;
    QString data = qEnvironmentVariable("QUANTLENS_DATA");
    if (data.isEmpty()) data = QStringLiteral(QL_DEFAULT_DATA_DIR);
    const QString stories = data + QStringLiteral("/models/stories260K/stories260K.gguf");
    if (QFileInfo::exists(stories)) return stories;
    return {};
}

// Screenshots go into the repository: a palette of the 256 most common colours (counted in
// 5-bit buckets, so a colour map's gradient keeps its share) makes them about 3x smaller than
// RGB and looks the same.
QImage compactForPng(const QImage& source)
{
    const QImage image = source.convertToFormat(QImage::Format_RGB32);
    struct Bucket {
        qint64 n = 0, r = 0, g = 0, b = 0;
    };
    QHash<quint32, Bucket> buckets;
    for (int y = 0; y < image.height(); ++y) {
        const auto* line = reinterpret_cast<const QRgb*>(image.constScanLine(y));
        for (int x = 0; x < image.width(); ++x) {
            const QRgb c = line[x];
            Bucket& b = buckets[quint32(qRed(c) >> 3) << 10 | quint32(qGreen(c) >> 3) << 5 |
                                quint32(qBlue(c) >> 3)];
            ++b.n;
            b.r += qRed(c);
            b.g += qGreen(c);
            b.b += qBlue(c);
        }
    }
    std::vector<Bucket> ranked;
    for (const Bucket& b : buckets) ranked.push_back(b);
    std::sort(ranked.begin(), ranked.end(),
              [](const Bucket& a, const Bucket& b) { return a.n > b.n; });
    QList<QRgb> palette;
    for (std::size_t i = 0; i < ranked.size() && i < 256; ++i)
        palette << qRgb(int(ranked[i].r / ranked[i].n), int(ranked[i].g / ranked[i].n),
                        int(ranked[i].b / ranked[i].n));
    return image.convertToFormat(QImage::Format_Indexed8, palette,
                                 Qt::ThresholdDither | Qt::AvoidDither);
}

// Reports the first failure only (a failed load is both an error and a finished load).
void fail(const QString& message, int code)
{
    static bool failed = false;
    if (std::exchange(failed, true)) return;
    std::fprintf(stderr, "quantlens: %s\n", qPrintable(message));
    QCoreApplication::exit(code);
}

}  // namespace

int main(int argc, char** argv)
{
    QApplication app(argc, argv);
    Q_INIT_RESOURCE(resources);  // the .qrc lives in the static ql_ui library
    QApplication::setOrganizationName(QStringLiteral("QuantLens"));
    QApplication::setApplicationName(QStringLiteral("QuantLens"));
    QApplication::setApplicationDisplayName(QStringLiteral("QuantLens"));
    QApplication::setApplicationVersion(QStringLiteral(QL_VERSION));
    QApplication::setDesktopFileName(QStringLiteral("io.github.quantlens.QuantLens"));
    QApplication::setWindowIcon(icons::app());

    QCommandLineParser parser;
    parser.setApplicationDescription(QStringLiteral("QuantLens: LLM quantization workbench"));
    parser.addHelpOption();
    parser.addVersionOption();
    parser.addPositionalArgument(QStringLiteral("MODEL"),
                                 QStringLiteral("GGUF file, safetensors file or folder, or "
                                                "llama2.c checkpoint to open"),
                                 QStringLiteral("[MODEL]"));
    const QCommandLineOption selectOption(QStringLiteral("select"),
                                          QStringLiteral("Select tensor NAME after loading."),
                                          QStringLiteral("NAME"));
    const QCommandLineOption screenshotOption(
        QStringLiteral("screenshot"),
        QStringLiteral("Save the window to FILE once the statistics are drawn, then quit."),
        QStringLiteral("FILE"));
    const QCommandLineOption sizeOption(QStringLiteral("size"),
                                        QStringLiteral("Window size (default 1400x900)."),
                                        QStringLiteral("WxH"), QStringLiteral("1400x900"));
    const QCommandLineOption binsOption(QStringLiteral("bins"),
                                        QStringLiteral("Histogram bins (default 256)."),
                                        QStringLiteral("N"));
    const QCommandLineOption ruleOption(QStringLiteral("outlier-rule"),
                                        QStringLiteral("Outlier channel rule: median or std."),
                                        QStringLiteral("RULE"));
    const QCommandLineOption kOption(QStringLiteral("outlier-k"),
                                     QStringLiteral("Multiple k of the outlier rule."),
                                     QStringLiteral("K"));
    const QCommandLineOption logOption(QStringLiteral("log-counts"),
                                       QStringLiteral("Start with a logarithmic histogram axis."));
    parser.addOptions(
        {selectOption, screenshotOption, sizeOption, binsOption, ruleOption, kOption, logOption});
    parser.process(app);

    const QString screenshot = parser.value(screenshotOption);
    // Screenshots start from the default layout and leave the user's settings alone.
    std::unique_ptr<QTemporaryDir> scratchSettings;
    if (!screenshot.isEmpty()) {
        scratchSettings = std::make_unique<QTemporaryDir>();
        QSettings::setPath(QSettings::NativeFormat, QSettings::UserScope, scratchSettings->path());
        QSettings::setPath(QSettings::IniFormat, QSettings::UserScope, scratchSettings->path());
    }

    MainWindow window;
    AppSession* session = window.session();

    const QStringList size = parser.value(sizeOption).split(QLatin1Char('x'));
    if (size.size() == 2 && !screenshot.isEmpty()) window.resize(size[0].toInt(), size[1].toInt());

    ql::TensorStatsOptions options = session->statsOptions();
    if (parser.isSet(binsOption)) options.histogramBins = parser.value(binsOption).toInt();
    if (parser.isSet(ruleOption))
        options.outliers.mode = parser.value(ruleOption) == QLatin1String("std")
                                    ? ql::OutlierMode::StdMultiple
                                    : ql::OutlierMode::MedianMultiple;
    if (parser.isSet(kOption)) options.outliers.k = parser.value(kOption).toDouble();
    session->setStatsOptions(options);
    if (parser.isSet(logOption)) {
        if (auto* log = window.findChild<QAbstractButton*>(QStringLiteral("histogramLogCheck")))
            log->setChecked(true);
    }

    const QString select = parser.value(selectOption);
    if (!select.isEmpty()) {
        window.setAutoSelectTensor(false);
        QObject::connect(session, &AppSession::modelLoaded, &window, [session, select] {
            if (!session->model()->find(select.toStdString()))
                return fail(QStringLiteral("no tensor named %1").arg(select), 2);
            session->selectTensor(select);
        });
    }

    if (!screenshot.isEmpty()) {
        auto taken = std::make_shared<bool>(false);
        QObject::connect(session, &AppSession::statsReady, &window, [&window, screenshot, taken] {
            if (*taken) return;
            *taken = true;
            // Let the pending layout and paint events run before grabbing.
            QTimer::singleShot(300, &window, [&window, screenshot] {
                QImage image = window.grab().toImage();
                if (screenshot.endsWith(QLatin1String(".png"), Qt::CaseInsensitive))
                    image = compactForPng(image);
                if (!image.save(screenshot))
                    return fail(QStringLiteral("could not write %1").arg(screenshot), 1);
                std::fprintf(stderr, "quantlens: wrote %s\n", qPrintable(screenshot));
                QCoreApplication::quit();
            });
        });
        QObject::connect(session, &AppSession::loadFinished, &window,
                         [](const QString& path, bool ok) {
                             if (!ok) fail(QStringLiteral("could not open %1").arg(path), 1);
                         });
        QObject::connect(session, &AppSession::errorOccurred, &window,
                         [](const QString& title, const QString& message) {
                             fail(title + QStringLiteral(": ") + message, 1);
                         });
        QObject::connect(session, &AppSession::statsFailed, &window,
                         [](const QString& tensor, const QString& message) {
                             fail(QStringLiteral("statistics of %1: %2").arg(tensor, message), 2);
                         });
        QTimer::singleShot(180000, &window,
                           [] { fail(QStringLiteral("screenshot timed out"), 3); });
    }

    window.show();

    QString model = parser.positionalArguments().value(0);
    if (model.isEmpty()) model = defaultModel();
    if (!model.isEmpty()) {
        window.openPath(model);
    } else if (screenshot.isEmpty()) {
        QTimer::singleShot(0, &window, &MainWindow::showOpenDialog);
    } else {
        std::fprintf(stderr, "quantlens: no model to take a screenshot of\n");
        return 1;
    }
    return app.exec();
}
