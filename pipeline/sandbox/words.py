"""The sandbox vocabulary: common lowercase English words, 3 to 7 letters."""

WORDS: tuple[str, ...] = tuple(
    sorted(
        set(
            """
    able acid aged also area army away baby back ball band bank base bath bear beat been beer bell belt
    best bird bite blow blue boat body bone book boot born boss both bowl bread brick bring brown build
    burn bush busy cake calm came camp card care cart case cash cast cat cell chair chalk cheap chest chief
    child chin city clay clean clear clock cloud coal coat code cold come cook cool copy corn cost crew
    crop crowd cup cut dark data date dawn days dead deal dear debt deep deer desk diet dirt dish dock
    dog done door dose down draw dream dress drink drive drop drum duck dust duty each earn ease east
    easy edge egg else even ever exit face fact fair fall farm fast fear feed feel feet fell felt field
    file fill film find fine fire firm fish fist five flag flat flew floor flow food foot form fort four
    free frog from fruit fuel full fund gain game gate gave gift girl give glad glass goal goat gold golf
    gone good grab gray great green grew grid grow gulf hair half hall hand hard harm hat have head heal
    hear heat held help herb hero hide high hill hint hold hole home hook hope horn horse host hour house
    huge hunt hurt idea inch iron item jail jazz join joke jump jury just keen keep kept kick kind king
    kiss kite knee knew knife knot know lack lady laid lake lamp land lane last late lawn lead leaf lean
    left lemon lend less life lift light like lime line lion list live load loan lock long look lord lose
    lost loud love luck lunch made mail main make male mall many map mark mass meal mean meat meet melt
    menu mild milk mind mine miss mode moon more most moth move much must nail name navy near neat neck
    need nest news next nice night nine node none noon nose note noun oak oil old once only open oven
    over pack page paid pain pair palm park part pass past path peak pear pen pick pie pile pine pink
    pipe plan plant play plot plug poem poet pole pond pool poor port post pot pour pull pump pure push
    quiz race rain rank rare rate read real rear rent rest rice rich ride ring rise risk road rock role
    roll roof room root rope rose rule rush safe sail salt same sand save seat seed seek seem self sell
    send ship shoe shop shot show shut sick side sign silk sing sink site size skin slip slow snow soap
    sock soft soil sold sole song soon sort soup spin spot star stay step stem stir stop such suit sure
    swim tail take tale talk tall tank tape task team tear tell tent term test text than that them then
    they thin this tide tidy tie time tiny tire told tone tool toss tour town toy tree trip true tube tune
    turn twin type unit upon used vase vast verb very view vote wage wait wake walk wall want warm wash
    wave weak wear week well went west what when whom wide wife wild will wind wine wing wire wise wish
    with wolf wood wool word wore work worm yard year yell yoga zero zone apple bench cabin candy chain
    cheek cliff crane crown daisy dance eagle earth fable fancy feast fence flame flute frost ghost giant
    grape grass heart honey jelly juice knock ladder laugh magic maple medal mouse music ocean olive
    onion orbit paint paper party pearl piano pilot plate queen quick radio river robot salad sauce scale
    scarf shark sheep shell shirt skirt smile snake space spoon storm sugar table tiger toast tooth tower
    train truck uncle wagon water whale wheat wheel world zebra
    """.split()
        )
    )
)
